"Evaluation end to end: metrics equal scikit-learn's on random inputs, compare/gate/promote from the CLI, bad inputs."

import json, warnings
from pathlib import Path
import numpy as np, pandas as pd, pytest
from sklearn import metrics as skm
from cvbench.evaluate.classification import classification_metrics, multilabel_metrics
from cvbench.evaluate.calibration import calibration_metrics
from cvbench.evaluate.stats import bootstrap_metrics, naive_bootstrap_metrics
from cvbench.evaluate.ledger import save_ledger
from conftest import cli_here as cli, run_dir_of


def _ledger(seed, n=400, k=6, skew=1.0):
    rng = np.random.default_rng(seed)
    classes = [f'k{i}' for i in range(k)]
    y = rng.integers(0, k, n)
    logits = rng.normal(size=(n, k)) * skew
    logits[np.arange(n), y] += rng.uniform(0, 3)
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    led = pd.DataFrame(
        dict(image_id=[str(i) for i in range(n)], label=[classes[i] for i in y], pred=[classes[i] for i in p.argmax(1)])
    )
    led[[f'prob_{c}' for c in classes]] = p
    return led, classes, y, p


@pytest.mark.parametrize('seed', range(8))
def test_every_metric_equals_sklearn(seed):
    led, classes, y, p = _ledger(seed, skew=1 + seed % 3)
    m = classification_metrics(led, classes, top_k=3)
    yhat = p.argmax(1)
    L = range(len(classes))
    ref = dict(
        accuracy=skm.accuracy_score(y, yhat),
        balanced_accuracy=skm.balanced_accuracy_score(y, yhat),
        kappa=skm.cohen_kappa_score(y, yhat),
        log_loss=skm.log_loss(y, p, labels=L),
    )
    for k, v in ref.items():
        assert abs(getattr(m, k) - v) <= 1e-12, k
    assert abs(m.top_k[3] - skm.top_k_accuracy_score(y, p, k=3, labels=L)) <= 1e-12
    assert abs(m.macro['auc'] - skm.roc_auc_score(y, p, multi_class='ovr', labels=L)) <= 1e-12
    np.testing.assert_allclose(
        m.per_class.ap, [skm.average_precision_score(y == c, p[:, c]) for c in L], atol=1e-12, rtol=0
    )
    cal = calibration_metrics(led, classes)
    assert abs(cal['brier'] - skm.brier_score_loss(y, p, labels=L, scale_by_half=False)) <= 1e-12
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        naive = naive_bootstrap_metrics(led, classes, n_resamples=30, seed=seed, top_k=3)
    fast = bootstrap_metrics(led, classes, n_resamples=30, seed=seed, top_k=3)
    np.testing.assert_allclose(fast[naive.columns].to_numpy(), naive.to_numpy(), atol=1e-12, rtol=0)


def test_multilabel_equals_sklearn():
    rng = np.random.default_rng(0)
    classes = ['a', 'b', 'c']
    n = 200
    Y = (rng.random((n, 3)) < 0.4).astype(int)
    P = np.clip(Y * 0.6 + rng.random((n, 3)) * 0.5, 0, 1)
    led = pd.DataFrame(dict(image_id=range(n), label=['|'.join(c for c, v in zip(classes, row) if v) for row in Y]))
    led[[f'prob_{c}' for c in classes]] = P
    m = multilabel_metrics(led, classes)
    assert (
        abs(m['hamming_loss'] - skm.hamming_loss(Y, P >= 0.5)) < 1e-12
        and abs(m['subset_accuracy'] - skm.accuracy_score(Y, P >= 0.5)) < 1e-12
    )


def _bad(led, classes, tmp_path, name):
    return save_ledger(led, tmp_path / f'{name}.parquet', classes)


def test_bad_ledgers_give_clear_errors(tmp_path):
    led, classes, _, _ = _ledger(0, n=60)
    good = _bad(led, classes, tmp_path, 'good')
    nan = led.copy()
    nan.loc[2, 'prob_k0'] = np.nan
    assert 'NaN or infinite' in cli('compare', good, _bad(nan, classes, tmp_path, 'nan'), check=2).stderr
    neg = led.copy()
    neg.loc[2, 'prob_k0'] = -0.2
    neg.loc[2, 'prob_k1'] += 0.2
    assert 'negative probabilities' in cli('compare', good, _bad(neg, classes, tmp_path, 'neg'), check=2).stderr
    missing = _bad(led.iloc[5:], classes, tmp_path, 'missing')
    assert '5 only in the baseline' in cli('compare', good, missing, check=2).stderr
    other = _bad(
        led.rename(columns={'prob_k5': 'prob_z'}).assign(
            label=lambda d: d.label.replace('k5', 'z'), pred=lambda d: d.pred.replace('k5', 'z')
        ),
        classes[:5] + ['z'],
        tmp_path,
        'other',
    )
    assert 'different classes' in cli('compare', good, other, check=2).stderr
    (tmp_path / 'gate.yaml').write_text('metrics:\n  acuracy: {max_drop: 0}\n')
    assert 'unknown metric `acuracy`' in cli('compare', good, good, '--gate', tmp_path / 'gate.yaml', check=2).stderr


def test_compare_gate_promote_report_cli(tiny, tiny_run, tmp_path):
    base = tiny_run  # one epoch, named `base`; only read here
    cand = run_dir_of(
        cli(
            'run',
            *tiny,
            'name=cand',
            'train.epochs=3',
            f'eval.regression_sets_dir={tmp_path}/sets',
            cwd=tmp_path,
            check=0,
        )
    )
    m = json.loads((cand / 'metrics.json').read_text())
    ci = {r['metric']: r for r in m['intervals']}
    assert ci['accuracy']['low'] <= m['accuracy'] <= ci['accuracy']['high'] and m['calibration']['temperature'] > 0
    assert len(json.loads((cand / 'thresholds.json').read_text())['operating_points']) == 10
    gate = tmp_path / 'gate.yaml'
    gate.write_text('metrics:\n  accuracy: {max_drop: 0.0}\nslices:\n  max_drop: 0.05\n')
    ok = cli('compare', base, cand, '--gate', gate, '--out', tmp_path / 'cmp', cwd=tmp_path)
    bad = cli('compare', cand, base, '--gate', gate, '--out', tmp_path / 'cmp2', cwd=tmp_path)
    assert (ok.returncode, bad.returncode) == (0, 1), ok.stdout + ok.stderr
    assert 'Decision: PASS' in ok.stdout and 'Decision: FAIL' in bad.stdout
    assert json.loads((tmp_path / 'cmp2' / 'comparison.json').read_text())['passed'] is False
    # a cluster of the candidate becomes a regression set that later evaluations report
    cl = pd.read_csv(cand / 'clusters.csv')
    cli('promote', cand, '--cluster', int(cl.cluster[0]), '--name', 'hard', '--sets-dir', tmp_path / 'sets', check=0)
    assert (
        'already exists'
        in cli('promote', cand, '--errors', '--name', 'hard', '--sets-dir', tmp_path / 'sets', check=2).stderr
    )
    cli('eval', cand, check=0)
    rs = pd.read_csv(cand / 'regression_sets.csv')
    assert (
        rs.set.tolist() == ['hard']
        and rs.found[0] == (pd.read_csv(cand / 'cluster_assignments.csv').cluster == cl.cluster[0]).sum()
    )
    cli('report', cand, '--baseline', base, '--gate', gate, check=0)
    md = (cand / 'report' / 'report.md').read_text()
    for sec in (
        '## Headline metrics',
        '## Calibration',
        '## Slices',
        '## Failure clusters',
        '## Regression sets',
        '## Comparison with base',
        '## Operating points',
    ):
        assert sec in md, sec


def test_seeds_summary(tiny, tmp_path):
    r = cli('run', *tiny, '--seeds', 0, 1, cwd=tmp_path, check=0)
    assert 'runs summary:' in r.stdout
    out = Path(r.stdout.split('runs summary: ')[1].split('\n')[0])
    out = out if out.is_absolute() else tmp_path / out
    s = json.loads(out.with_name('summary.json').read_text())
    acc = next(x for x in s['summary'] if x['metric'] == 'accuracy')
    assert s['seeds'] == [0, 1] and acc['runs'] == 2 and acc['min'] <= acc['mean'] <= acc['max']
