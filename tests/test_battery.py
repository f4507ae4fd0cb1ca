"""The bad-input battery: configs, overrides, ledgers, gates, manifests and arguments a user gets wrong, each through
the real command (`cvbench.cli.main`, in process so that the battery stays fast). Every case ends in one of two classes:

- `error`: exit status 2, one message naming the problem (and the words we expect), no traceback, nothing written;
- `ok`: handled (exit 0 or 1 as the command defines), with the bad item reported.

Image files, the service and packages have batteries of their own (`test_bad_data.py`, `test_serve.py`,
`test_package_trust.py`); `test_battery_size` counts them all."""

import ast
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cvbench.cli import main
from cvbench.evaluate.ledger import ledger_frame, save_ledger

TESTS = Path(__file__).parent


def _run(capsys, *args) -> tuple[int, str, str]:
    "Exit status, stdout and stderr of `cvbench ARGS` run in this process."
    try:
        rc = main([str(a) for a in args])
    except SystemExit as e:  # argparse's usage errors
        rc = e.code
    out = capsys.readouterr()
    return rc, out.out, out.err


def _error(capsys, expect: str, *args):
    rc, out, err = _run(capsys, *args)
    assert rc == 2, f'exit {rc}\n{out}\n{err}'
    assert 'Traceback' not in err and 'internal error' not in err, err
    assert expect in err, err
    return err


# --- configs and overrides: rejected at load, before any data is read, and no run folder is left behind ---
CONFIG_CASES = {
    'train.epochs=0': 'at least 1',
    'train.epochs=-1': 'at least 1',
    'train.batch_size=0': 'at least 1',
    'train.lr=-1': 'positive finite',
    'train.lr=.nan': 'positive finite',
    'train.lr=.inf': 'positive finite',
    'train.weight_decay=-0.1': 'positive finite',
    'train.max_rotate=720': 'between 0 and 180',
    'train.num_workers=-2': 'zero',
    'train.device=tpu': '`cuda:N`',
    'train.augment=maybe': 'must be bool',
    'train.batch_size=big': 'must be int',
    'train.epoch=3': 'did you mean `train.epochs`',
    'preprocess.size=0': 'between 8 and 4096',
    'preprocess.size=100000': 'between 8 and 4096',
    'preprocess.resize=stretch': '`squash`',
    'preprocess.mean=[0.5,0.5]': 'three finite numbers',
    'preprocess.std=[0,0.2,0.2]': 'three positive numbers',
    'data.valid_pct=0': 'strictly between 0 and 1',
    'data.valid_pct=1.5': 'strictly between 0 and 1',
    'eval.top_k=0': 'at least 1',
    'eval.n_bins=1': 'at least 2',
    'eval.n_resamples=3': 'at least 10',
    'eval.target_recall=2': 'recall in (0, 1]',
    'name=a/b': 'without `/`',
    'seed=-1': 'non-negative',
    'task=segmentaton': 'unknown task',
    'train.lr=[': 'is not a value',
    'train': 'config file train does not exist',
    'data.source=no/such/folder': 'does not exist',
    'model.pretrained=no_such_weights.pth': 'weights file no_such_weights.pth does not exist',
}


@pytest.mark.parametrize('override', CONFIG_CASES)
def test_bad_config_value(override, capsys, tmp_path):
    _error(capsys, CONFIG_CASES[override], 'run', f'runs_dir={tmp_path}/runs', override)
    assert not (tmp_path / 'runs').exists()  # a failed start leaves no run folder


YAML_CASES = {
    'duplicate_key': ('train:\n  epochs: 2\n  epochs: 3\n', 'given twice'),
    'not_a_mapping': ('- 1\n- 2\n', 'must be a mapping'),
    'section_not_a_mapping': ('train: 3\n', 'must be a mapping'),
    'broken_yaml': ('train: [1, 2\n', 'not valid YAML'),
    'binary': (b'\xff\xfe\x00\x01garbage', 'not valid YAML'),
    'tab_indent': ('train:\n\tepochs: 2\n', 'not valid YAML'),
    'bom_and_bad_value': ('\ufefftrain:\n  epochs: 0\n', 'at least 1'),  # the BOM is fine, the value is not
}


@pytest.mark.parametrize('case', YAML_CASES)
def test_bad_config_file(case, capsys, tmp_path):
    text, expect = YAML_CASES[case]
    f = tmp_path / 'c.yaml'
    f.write_bytes(text if isinstance(text, bytes) else text.encode())
    _error(capsys, expect, 'run', f, f'runs_dir={tmp_path}/runs')


def test_missing_config_file_and_run_folder(capsys, tmp_path):
    _error(capsys, 'does not exist', 'run', tmp_path / 'nope.yaml')
    _error(capsys, 'is not a run directory', 'run', '--resume', tmp_path / 'nope')
    (tmp_path / 'file').write_text('x')
    _error(capsys, 'is not a run directory', 'run', '--resume', tmp_path / 'file')
    _error(capsys, 'drop the config', 'run', '--resume', tmp_path, 'train.epochs=2')


# --- ledgers: `cvbench report LEDGER` ---
CLASSES = ['cat', 'dog', 'owl']


def _ledger(n=30, seed=0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    p = rng.dirichlet(np.ones(3), n)
    df = pd.DataFrame(dict(image_id=[f'i{k}' for k in range(n)], path=[f'i{k}.png' for k in range(n)],
                           split='valid', label=rng.choice(CLASSES, n)))
    return ledger_frame(df, p, CLASSES)


def _set(df, col, row, value):
    df = df.copy()
    df[col] = df[col].astype(object) if isinstance(value, str) else df[col]
    df.loc[row, col] = value
    return df


LEDGER_CASES = {
    'empty': (lambda d: d.iloc[:0], 'no rows'),
    'nan_prob': (lambda d: _set(d, 'prob_cat', 3, np.nan), 'NaN or infinite'),
    'inf_prob': (lambda d: _set(d, 'prob_cat', 3, np.inf), 'NaN or infinite'),
    'negative_prob': (lambda d: _set(d, 'prob_cat', 3, -0.5), 'negative probabilities'),
    'logits': (lambda d: d.assign(prob_cat=d.prob_cat * 7), 'do not sum to 1'),
    'duplicate_ids': (lambda d: d.assign(image_id='same'), 'duplicate image_id'),
    'unknown_label': (lambda d: _set(d, 'label', 0, 'fish'), "values ['fish'] outside the class list"),
    'unknown_pred': (lambda d: _set(d, 'pred', 0, 'fish'), "values ['fish'] outside the class list"),
    'unlabelled': (lambda d: d.assign(label=''), 'need labelled images'),
    'missing_prob_column': (lambda d: d.drop(columns='prob_owl'), 'prob_owl'),
    'missing_label_column': (lambda d: d.drop(columns='label'), "lacks column(s) ['label']"),
}


@pytest.mark.parametrize('case', LEDGER_CASES)
def test_bad_ledger(case, capsys, tmp_path):
    make, expect = LEDGER_CASES[case]
    path = save_ledger(make(_ledger()), tmp_path / 'p.parquet', CLASSES)
    _error(capsys, expect, 'report', path)
    assert not (tmp_path / 'p-report').exists()


def test_ledger_that_is_not_parquet_or_missing(capsys, tmp_path):
    (tmp_path / 'p.parquet').write_bytes(b'PAR1 but not really')
    _error(capsys, 'p.parquet', 'report', tmp_path / 'p.parquet')
    _error(capsys, 'does not exist', 'report', tmp_path / 'missing.parquet')


def test_newer_ledger_version_is_refused(capsys, tmp_path):
    path = save_ledger(_ledger(), tmp_path / 'p.parquet', CLASSES, ledger_version=99)
    _error(capsys, 'upgrade cvbench', 'report', path)


def test_all_correct_ledger_reports(capsys, tmp_path):
    d = _ledger()
    p = np.eye(3)[d.label.map(CLASSES.index)] * 0.98 + 0.02 / 3
    perfect = ledger_frame(d[['image_id', 'path', 'split', 'label']], p, CLASSES)
    rc, out, err = _run(capsys, 'report', save_ledger(perfect, tmp_path / 'p.parquet', CLASSES))
    assert rc == 0 and 'report:' in out, err
    assert re.search(r'\| accuracy +\| +1(\.0000)? +\|', (tmp_path / 'p-report' / 'report.md').read_text())


def test_pred_that_contradicts_probabilities_is_reported(capsys, tmp_path, caplog):
    d = _ledger()
    d.loc[0, 'pred'] = [c for c in CLASSES if c != d.loc[0, 'pred']][0]
    rc, out, err = _run(capsys, 'report', save_ledger(d, tmp_path / 'p.parquet', CLASSES))
    assert rc == 0, err
    assert 'not their most probable class' in caplog.text + err


# --- gates: `cvbench compare A B --gate G` ---
GATE_CASES = {
    'unknown_metric': ('metrics:\n  acuracy: {max_drop: 0}\n', 'unknown metric `acuracy`'),
    'unknown_section': ('metric:\n  accuracy: {max_drop: 0}\n', 'unknown key(s)'),
    'string_drop': ('metrics:\n  accuracy: {max_drop: lots}\n', 'must be a number'),
    'negative_drop': ('metrics:\n  accuracy: {max_drop: -0.1}\n', 'must be a number between 0'),
    'bool_drop': ('metrics:\n  accuracy: {max_drop: true}\n', 'must be a number'),
    'recall_above_one': ('operating_points:\n  - {class: cat, recall: 1.5, max_fpr: 0.1}\n', 'recall'),
    'op_missing_key': ('operating_points:\n  - {class: cat, recall: 0.9}\n', 'needs class, recall and max_fpr'),
    'min_accuracy_pct': ('regression_sets:\n  min_accuracy: 95\n', 'between 0 and 1'),
    'not_a_mapping': ('- accuracy\n', 'must be a mapping'),
    'broken_yaml': ('metrics: {accuracy: [\n', 'not valid YAML'),
    'duplicate_key': ('metrics:\n  accuracy: {max_drop: 0}\n  accuracy: {max_drop: 1}\n', 'given twice'),
    'slices_min_count_zero': ('slices: {min_count: 0}\n', 'min_count'),
}


@pytest.mark.parametrize('case', GATE_CASES)
def test_bad_gate(case, capsys, tmp_path):
    text, expect = GATE_CASES[case]
    led = save_ledger(_ledger(), tmp_path / 'p.parquet', CLASSES)
    (tmp_path / 'gate.yaml').write_text(text)
    _error(capsys, expect, 'compare', led, led, '--gate', tmp_path / 'gate.yaml', '--out', tmp_path / 'cmp')
    assert not (tmp_path / 'cmp').exists()


def test_gate_decisions_and_exit_codes(capsys, tmp_path):
    a = save_ledger(_ledger(seed=0), tmp_path / 'a.parquet', CLASSES)
    (tmp_path / 'strict.yaml').write_text('metrics:\n  accuracy: {max_drop: 0}\n')
    (tmp_path / 'loose.yaml').write_text('metrics:\n  accuracy: {max_drop: 1}\n')
    rc, out, _ = _run(capsys, 'compare', a, a, '--gate', tmp_path / 'loose.yaml', '--out', tmp_path / 'c1')
    assert rc == 0 and out.startswith('**Decision: PASS**')
    worse = _ledger(seed=0)
    worse['pred'] = worse['label'].map({'cat': 'dog', 'dog': 'owl', 'owl': 'cat'})
    worse = ledger_frame(worse[['image_id', 'path', 'split', 'label']],
                         np.eye(3)[worse.pred.map(CLASSES.index)] * 0.9 + 0.1 / 3, CLASSES)
    b = save_ledger(worse, tmp_path / 'b.parquet', CLASSES)
    rc, out, _ = _run(capsys, 'compare', a, b, '--gate', tmp_path / 'strict.yaml', '--out', tmp_path / 'c2')
    assert rc == 1 and out.startswith('**Decision: FAIL**\n- FAILED metric accuracy')
    assert '-0.0000' not in out and '| True ' not in out and '| yes ' in out


# --- manifests and arguments ---
def _images(root: Path, n: int = 4) -> list[str]:
    from PIL import Image
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.new('RGB', (10, 10), (i * 40, 0, 0)).save(root / f'{i}.png')
    return [f'{i}.png' for i in range(n)]


MANIFEST_CASES = {
    'empty_file': (lambda names: '', 'empty'),
    'header_only': (lambda names: 'path,label\n', 'no rows'),
    'missing_path_column': (lambda names: 'file,label\n' + ''.join(f'{n},a\n' for n in names), "['path']"),
}


@pytest.mark.parametrize('case', MANIFEST_CASES)
def test_bad_manifest(case, capsys, tmp_path):
    make, expect = MANIFEST_CASES[case]
    names = _images(tmp_path)
    (tmp_path / 'm.csv').write_text(make(names))
    err = _error(capsys, '', 'data', 'version', tmp_path / 'm.csv')
    assert expect in err or 'm.csv' in err, err


@pytest.mark.parametrize('sep', [',', ';', '\t'])
def test_manifest_with_bom_or_other_delimiter_reads(sep, capsys, tmp_path):
    names = _images(tmp_path)
    rows = ''.join(f'{n}{sep}{"ab"[i % 2]}\n' for i, n in enumerate(names))
    (tmp_path / 'm.csv').write_text(f'\ufeffpath{sep}label\n' + rows)
    rc, out, err = _run(capsys, 'data', 'version', tmp_path / 'm.csv', '--out', tmp_path / 'man.csv')
    assert rc == 0 and '(4 images)' in out, err
    assert sorted(pd.read_csv(tmp_path / 'man.csv', comment='#').label) == ['a', 'a', 'b', 'b']


ARG_CASES = {
    'predict_txt_out': (['predict', '{pkg}', '{dir}', '--out', '{dir}/x.txt'], '.parquet ledger or a .csv'),
    'report_gate_without_baseline': (['report', '{dir}', '--gate', 'g.yaml'], 'give --baseline too'),
    'near_radius_negative': (['data', 'check', '{dir}', '--near-radius', '-1', '--out', '{dir}/dq'], 'radius'),
    'unknown_command': (['trian'], 'invalid choice'),
    'promote_two_sources': (['promote', '{dir}', '--name', 's', '--errors', '--cluster', '1'], 'exactly one of'),
    'seeds_with_resume': (['run', '--resume', '{dir}', '--seeds', '1'], 'drop the config'),
}


@pytest.mark.parametrize('case', ARG_CASES)
def test_bad_arguments(case, capsys, tmp_path):
    args, expect = ARG_CASES[case]
    (tmp_path / 'pkg').mkdir()
    args = [a.format(dir=tmp_path, pkg=tmp_path / 'pkg') for a in args]
    _error(capsys, expect, *args)


def test_promote_ids_not_in_the_run(capsys, tmp_path):
    ev = tmp_path / 'ev'
    save_ledger(_ledger(), ev / 'predictions.parquet', CLASSES)
    (tmp_path / 'ids.txt').write_text('i1\nnot-an-image\n')
    _error(capsys, '1 of 2 id(s) are not images', 'promote', ev, '--name', 's', '--ids', tmp_path / 'ids.txt',
           '--sets-dir', tmp_path / 'sets')
    assert not (tmp_path / 'sets').exists()


# --- the whole battery ---
def _count_cases(path: Path) -> int:
    "Test functions plus parametrized cases (beyond the first) of a test module."
    tree = ast.parse(path.read_text())
    n = sum(isinstance(f, ast.FunctionDef) and f.name.startswith('test_') for f in tree.body)
    tables = {t.id: len(v.keys) for s in tree.body if isinstance(s, ast.Assign) and isinstance(v := s.value, ast.Dict)
              for t in s.targets if isinstance(t, ast.Name)}
    for f in tree.body:
        for d in getattr(f, 'decorator_list', []):
            if isinstance(d, ast.Call) and getattr(d.func, 'attr', '') == 'parametrize' and len(d.args) > 1:
                arg = d.args[1]
                k = len(arg.elts) if isinstance(arg, (ast.List, ast.Tuple)) else tables.get(getattr(arg, 'id', ''), 1)
                n += k - 1
    return n


def test_battery_size():
    files = ['test_battery.py', 'test_bad_data.py', 'test_bad_input.py', 'test_serve.py', 'test_package_trust.py']
    counts = {f: _count_cases(TESTS / f) for f in files if (TESTS / f).exists()}
    assert sum(counts.values()) >= 100, counts
    json.dumps(counts)
