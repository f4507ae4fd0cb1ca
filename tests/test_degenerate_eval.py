"Every evaluation function on the degenerate ledgers a user meets: zero errors, one class, one image, a class absent."
import json
import warnings

import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as skm

from cvbench.evaluate.ledger import LedgerError, ledger_frame, save_ledger
from cvbench.evaluate.suite import evaluate_ledger, save_evaluation
from cvbench.evaluate.compare import compare
from cvbench.report.documents import evaluation_sections, write_report


def _ledger(labels, preds, classes, conf=0.9, emb=True):
    "A ledger whose `pred` is each row's argmax, with `conf` on it and the rest spread evenly."
    k = len(classes)
    p = np.full((len(labels), k), (1 - conf) / max(k - 1, 1))
    for i, c in enumerate(preds):
        p[i, classes.index(c)] = conf if k > 1 else 1.0
    ids = [f'im{i}' for i in range(len(labels))]
    df = pd.DataFrame(dict(image_id=ids, path=[f'{i}.png' for i in ids],
                           split='valid', label=labels))
    led = ledger_frame(df, p, classes)
    if emb:
        led['embedding'] = list(np.random.default_rng(0).normal(size=(len(labels), 4)).astype('float32'))
    return led


CASES = dict(
    perfect=(list('abcabcabc') * 3, list('abcabcabc') * 3, list('abc')),
    one_class=(['a'] * 12, ['a'] * 12, ['a']),
    one_image=(['a'], ['b'], list('ab')),
    one_image_right=(['a'], ['a'], list('ab')),
    absent_class=(list('abab') * 6, list('abba') * 6, list('abc')),  # `c` has no validation image
    all_wrong=(list('ab') * 10, list('ba') * 10, list('ab')),
)


@pytest.mark.filterwarnings('error::UserWarning', 'error::RuntimeWarning')
@pytest.mark.parametrize('case', CASES)
def test_evaluation_and_report_on_degenerate_ledgers(case, tmp_path):
    labels, preds, classes = CASES[case]
    led = _ledger(labels, preds, classes)
    ev = evaluate_ledger(led, classes, n_resamples=50, min_slice_count=1)
    acc = ev.metrics.accuracy
    assert acc == pytest.approx(skm.accuracy_score(labels, preds))
    save_evaluation(ev, tmp_path)
    saved = json.loads((tmp_path / 'metrics.json').read_text())  # strict JSON, NaN written as null
    assert saved['accuracy'] == pytest.approx(acc)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')  # the reference may warn; cvbench itself must not (see the mark)
        assert saved['confusion'] == skm.confusion_matrix(labels, preds, labels=classes).tolist()
    files = write_report(evaluation_sections(ev, led, tmp_path, tmp_path / 'report', {}), tmp_path / 'report', case)
    assert 'accuracy' in files['markdown'].read_text()
    if acc == 1.0:
        assert len(ev.confused) == 0  # zero errors: an empty table, not a crash
    # a comparison of the ledger with itself is a tie on every metric
    cmp = compare(led, led, classes, n_resamples=50)
    assert np.allclose(cmp.metrics['delta'].astype(float).fillna(0), 0)
    assert cmp.mcnemar['p_value'] == 1.0


def test_empty_and_unlabelled_ledgers_are_clear_errors(tmp_path):
    led = _ledger(list('ab'), list('ab'), list('ab'))
    with pytest.raises(LedgerError, match='no rows'):
        evaluate_ledger(led.iloc[:0], list('ab'))
    with pytest.raises(LedgerError, match='need labelled images'):
        evaluate_ledger(led.assign(label=''), list('ab'))
    save_ledger(led.iloc[:0], tmp_path / 'p.parquet', list('ab'))
