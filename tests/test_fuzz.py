"""Property-based fuzzing of every parser a user feeds: YAML configs and overrides, gate files, CSV manifests, ledgers
and package manifests. The property: any input is either accepted or refused with a `CvbenchError` (a message for the
user), never another exception from deep inside a library."""

import json
import string

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from PIL import Image

from cvbench.core import CvbenchError, check_config, load_config, parse_overrides
from cvbench.data.formats import read_csv_manifest
from cvbench.deploy.package import read_package
from cvbench.evaluate.classification import check_ledger as check_values
from cvbench.evaluate.compare import load_gate
from cvbench.evaluate.ledger import ledger_frame, read_ledger, save_ledger

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
KEYS = ['train.epochs', 'train.lr', 'train.batch_size', 'preprocess.size', 'preprocess.mean', 'data.valid_pct',
        'model.name', 'model.pretrained', 'eval.top_k', 'track.wandb', 'name', 'seed', 'train', 'x.y', 'train.lr.z']
scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True),
                    st.text(max_size=12))
values = st.recursive(scalars, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=6), c, max_size=3),
                      max_leaves=8)


def _refused_or_ok(fn, *args):
    try:
        return fn(*args)
    except CvbenchError:
        return None


@FUZZ
@given(st.lists(st.tuples(st.sampled_from(KEYS), st.text(string.printable, max_size=16)), max_size=4))
def test_overrides(pairs):
    cfg = _refused_or_ok(load_config, None, [f'{k}={v}' for k, v in pairs])
    if cfg is not None:
        assert check_config(cfg) is cfg  # whatever loads is in range


@FUZZ
@given(st.text(max_size=40))
def test_override_strings(s):
    _refused_or_ok(parse_overrides, [s])


@FUZZ
@given(st.dictionaries(st.sampled_from(['train', 'data', 'model', 'eval', 'preprocess', 'name', 'bogus']), values,
                       max_size=4))
def test_yaml_configs(tmp_path, d):
    f = tmp_path / 'c.yaml'
    f.write_text(json.dumps(d))  # JSON is YAML
    _refused_or_ok(load_config, f)


@FUZZ
@given(st.binary(max_size=200))
def test_config_bytes(tmp_path, b):
    f = tmp_path / 'c.yaml'
    f.write_bytes(b)
    _refused_or_ok(load_config, f)


gate_rules = st.fixed_dictionaries({}, optional=dict(
    metrics=st.dictionaries(st.sampled_from(['accuracy', 'macro_f1', 'acc', 'log_loss']),
                            st.dictionaries(st.sampled_from(['max_drop', 'min']), scalars, max_size=2), max_size=3),
    slices=st.dictionaries(st.sampled_from(['metric', 'max_drop', 'min_count', 'columns', 'x']), scalars, max_size=3),
    operating_points=st.lists(st.dictionaries(st.sampled_from(['class', 'recall', 'max_fpr']), scalars), max_size=2),
    regression_sets=st.dictionaries(st.sampled_from(['min_accuracy', 'y']), scalars, max_size=2),
))


@FUZZ
@given(st.one_of(gate_rules, values))
def test_gates(tmp_path, g):
    f = tmp_path / 'gate.yaml'
    f.write_text(json.dumps(g))
    _refused_or_ok(load_gate, f)


@pytest.fixture(scope='module')
def image_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp('imgs')
    for i in range(3):
        Image.new('RGB', (8, 8), (i * 80, 0, 0)).save(d / f'{i}.png')
    return d


cells = st.one_of(st.sampled_from(['0.png', '1.png', '2.png', 'missing.png', '../0.png', '', 'a', 'b', 'train',
                                   'valid', 'x,y', '"q"', '\ufeff', ' ']), st.text(max_size=6))


@FUZZ
@given(st.lists(st.sampled_from(['path', 'label', 'split', 'site', 'Path', '']), min_size=1, max_size=4),
       st.lists(st.lists(cells, min_size=1, max_size=4), max_size=5), st.sampled_from([',', ';', '\t']))
def test_csv_manifests(image_dir, header, rows, sep):
    f = image_dir / 'm.csv'
    f.write_text('\n'.join(sep.join(r) for r in [header, *rows]) + '\n')
    s = _refused_or_ok(read_csv_manifest, f)
    if s is not None:
        assert len(s.df) > 0 and s.df['path'].map(lambda p: (image_dir / p).is_file()).all()


probs = st.floats(allow_nan=True, allow_infinity=True, width=32)


@FUZZ
@given(st.integers(0, 5), st.lists(probs, min_size=15, max_size=15), st.lists(st.sampled_from(['a', 'b', 'z', '']),
       min_size=5, max_size=5), st.booleans())
def test_ledgers(tmp_path, n, ps, labels, dup_ids):
    classes = ['a', 'b', 'c']
    p = np.array(ps[: n * 3], dtype=float).reshape(n, 3)
    ids = ['same'] * n if dup_ids else [str(i) for i in range(n)]
    df = pd.DataFrame(dict(image_id=ids, path=ids, split='valid', label=labels[:n]))
    led = ledger_frame(df, np.nan_to_num(p), classes)
    led[[f'prob_{c}' for c in classes]] = p  # raw, NaN and all
    path = save_ledger(led, tmp_path / 'p.parquet', classes)
    got = _refused_or_ok(read_ledger, path)
    if got is not None:
        _refused_or_ok(check_values, got[0], got[1]['classes'])


@FUZZ
@given(st.one_of(values, st.fixed_dictionaries(dict(files=values, preprocess=values, classes=values, arch=values))))
def test_package_manifests(tmp_path, m):
    pkg = tmp_path / 'pkg'
    pkg.mkdir(exist_ok=True)
    (pkg / 'manifest.json').write_text(json.dumps(m))
    _refused_or_ok(read_package, pkg)
