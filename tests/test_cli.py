"End-to-end: the real `cvbench` command in a temporary directory."

import json, subprocess, sys
from pathlib import Path
import numpy as np, pandas as pd
from sklearn.metrics import accuracy_score
from conftest import cli, run_dir_of, make_imagefolder


def test_help_lists_subcommands():
    out = cli('--help', check=0).stdout
    for cmd in ('run', 'train', 'eval', 'report'):
        assert cmd in out
    for cmd in ('run', 'train', 'eval', 'report'):
        assert 'usage: cvbench ' + cmd in cli(cmd, '--help', check=0).stdout


def test_run_end_to_end(tiny, tmp_path):
    r = cli('run', *tiny, 'track.wandb=true', 'track.mode=offline', cwd=tmp_path, check=0)
    rd = run_dir_of(r)
    rd = rd if rd.is_absolute() else tmp_path / rd
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
    page = (tmp_path / 'reports' / rd.name / 'report.html').read_text()
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
    rd = run_dir_of(cli('train', *tiny, cwd=tmp_path, check=0))
    assert (rd / 'model.safetensors').is_file() and not (rd / 'predictions.parquet').exists()
    out = cli('eval', rd, check=0).stdout
    assert 'accuracy:' in out and (rd / 'predictions.parquet').is_file()
    cli('report', rd, '--out', tmp_path / 'rep', check=0)
    assert (tmp_path / 'rep' / 'report.html').is_file() and (rd / 'report' / 'report.md').is_file()
    # a checkpoint on its own evaluates another dataset with the same classes
    digits = next(Path(tiny[2].split('=', 1)[1]).glob('digits'))
    ev = tmp_path / 'ev'
    out = cli('eval', '--checkpoint', rd / 'model.safetensors', '--data', digits, '--out', ev, check=0).stdout
    assert len(pd.read_parquet(ev / 'predictions.parquet')) == 1797 and 'accuracy' in out
    # ... and a dataset with other classes is refused with a clear message
    other = make_imagefolder(tmp_path / 'other', {'cat': 2, 'dog': 2})
    r = cli('eval', '--checkpoint', rd / 'model.safetensors', '--data', other, cwd=tmp_path, check=2)
    assert not list(tmp_path.glob('eval-model-other'))  # a failed evaluation leaves nothing behind
    assert "labels ['cat', 'dog'] are not classes of the model" in r.stderr
