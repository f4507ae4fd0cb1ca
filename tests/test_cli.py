"""End-to-end: the real `cvbench` command (a subprocess) on the session's tiny run, then its subcommands through
`cvbench.cli.main` in this process, in a temporary directory."""

import json, subprocess, sys
from pathlib import Path
import numpy as np, pandas as pd
from sklearn.metrics import accuracy_score
from conftest import cli, cli_here, run_dir_of, make_imagefolder


def test_help_lists_subcommands():
    out = cli('--help', check=0).stdout
    for cmd in ('run', 'train', 'eval', 'report'):
        assert cmd in out
    for cmd in ('run', 'train', 'eval', 'report'):
        assert 'usage: cvbench ' + cmd in cli_here(cmd, '--help', check=0).stdout


def test_run_end_to_end(tiny_run):
    "`cvbench run` with W&B offline (the session's `tiny_run`, made by the real command): every file of a run."
    rd = tiny_run
    for f in (
        'config.yaml',
        'environment.json',
        'samples.parquet',
        'skipped.csv',
        'history.csv',
        'checkpoints/best.safetensors',
        'checkpoints/last.pt',
        'model.safetensors',
        'preprocess.json',
        'predictions.parquet',
        'metrics.json',
        'report/report.md',
        'report/report.html',
        'report/confusion_matrix.png',
        'report/worst_predictions.png',
        'run.json',
        'wandb_run_id.txt',
    ):
        assert (rd / f).is_file(), f
    ledger, metrics = pd.read_parquet(rd / 'predictions.parquet'), json.loads((rd / 'metrics.json').read_text())
    assert len(ledger) == 360 and metrics['n'] == 360  # the stratified 20 % validation split of 1,797 digits
    assert metrics['accuracy'] == accuracy_score(ledger.label, ledger.pred)
    assert metrics['accuracy'] > 0.3  # one epoch at 16 px is well above chance
    np.testing.assert_allclose(ledger.filter(like='prob_').sum(axis=1), 1, atol=1e-9)
    run = json.loads((rd / 'run.json').read_text())
    assert run['status'] == 'complete' and len(run['data_version']) == 16
    page = (rd.parents[1] / 'reports' / rd.name / 'report.html').read_text()
    assert 'Confusion matrix' in page and page.count('data:image/png;base64,') >= 3 and '.png"' not in page
    # W&B ran offline inside the run directory, and `wandb sync` accepts the run
    run_id = (rd / 'wandb_run_id.txt').read_text().strip()
    assert list(rd.glob(f'wandb/offline-run-*-{run_id}/run-{run_id}.wandb'))
    sync = subprocess.run(
        [str(Path(sys.executable).parent / 'wandb'), 'sync', '--dry-run'],
        cwd=rd,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert f'run-{run_id}.wandb' in sync.stdout + sync.stderr


def test_train_eval_report(tiny, tmp_path):
    rd = run_dir_of(cli_here('train', *tiny, cwd=tmp_path, check=0))
    assert (rd / 'model.safetensors').is_file() and not (rd / 'predictions.parquet').exists()
    out = cli_here('eval', rd, check=0).stdout
    assert 'accuracy:' in out and (rd / 'predictions.parquet').is_file()
    cli_here('report', rd, '--out', tmp_path / 'rep', check=0)
    assert (tmp_path / 'rep' / 'report.html').is_file() and (rd / 'report' / 'report.md').is_file()
    # a checkpoint on its own evaluates another dataset with the same classes
    digits = next(Path(tiny[2].split('=', 1)[1]).glob('digits'))
    ev = tmp_path / 'ev'
    out = cli_here('eval', '--checkpoint', rd / 'model.safetensors', '--data', digits, '--out', ev, check=0).stdout
    assert len(pd.read_parquet(ev / 'predictions.parquet')) == 1797 and 'accuracy' in out
    # ... and a dataset with other classes is refused with a clear message
    other = make_imagefolder(tmp_path / 'other', {'cat': 2, 'dog': 2})
    r = cli_here('eval', '--checkpoint', rd / 'model.safetensors', '--data', other, cwd=tmp_path, check=2)
    assert not list(tmp_path.glob('eval-model-other'))  # a failed evaluation leaves nothing behind
    assert "labels ['cat', 'dog'] are not classes of the model" in r.stderr
    # a CSV manifest whose paths are relative to --root, not to the CSV's folder: --root is honoured
    valid = pd.read_parquet(rd / 'samples.parquet').query("split == 'valid'").head(20)
    (tmp_path / 'manifests').mkdir()
    valid[['path', 'label']].to_csv(tmp_path / 'manifests' / 'subset.csv', index=False)
    out = cli_here('eval', rd, '--data', tmp_path / 'manifests' / 'subset.csv', '--root', digits, check=0).stdout
    assert 'n: 20' in out and len(pd.read_parquet(rd / 'eval-subset' / 'predictions.parquet')) == 20


def test_exit_codes_of_internal_errors(monkeypatch, capsys, tmp_path):
    "An unexpected error is exit 3 with one line and a traceback file (printed with --debug), never a gate's 1."
    import cvbench.runs
    from cvbench.cli import main

    def boom(*a, **kw):
        raise ZeroDivisionError('planted bug')

    monkeypatch.setattr(cvbench.runs, 'report_run', boom)
    assert main(['report', str(tmp_path)]) == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0] == 'cvbench: internal error: ZeroDivisionError: planted bug'
    tb = Path(err[1].split('traceback: ')[1].rstrip(')'))
    assert 'Traceback' in tb.read_text() and 'boom' in tb.read_text()
    assert main(['--debug', 'report', str(tmp_path)]) == 3
    assert 'Traceback (most recent call last)' in capsys.readouterr().err


def test_unknown_task_is_a_usage_error(tiny, tmp_path):
    r = cli_here('run', *tiny, 'task=segmentaton', cwd=tmp_path, check=2)
    assert 'unknown task `segmentaton`; cvbench knows classification' in r.stderr
    assert not (tmp_path / 'runs').exists()  # no run folder for a run that never started


def test_an_unwritable_output_is_a_usage_error(tmp_path):
    "An output path the system refuses (here: under a file) is exit 2 with the path named, not a traceback."
    folder = make_imagefolder(tmp_path / 'ds', {'a': 2, 'b': 2})
    (tmp_path / 'afile').write_text('not a folder')
    r = cli_here('data', 'version', folder, '--out', tmp_path / 'afile' / 'manifest.csv', check=2)
    assert r.stderr.startswith('cvbench: error:') and 'afile' in r.stderr and 'Traceback' not in r.stderr
