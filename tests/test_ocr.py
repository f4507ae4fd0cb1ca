"OCR error rates: edits against rapidfuzz and a hand-written edit distance, intervals, slices, degenerate cases, files."

import json
import re
import unicodedata

import jiwer
import numpy as np
import pandas as pd
import pytest
from rapidfuzz.distance import Levenshtein

from cvbench.evaluate.ledger import LedgerError
from cvbench.evaluate.ocr import (PER_SAMPLE_FILE, check_text_ledger, edit_operations, evaluate_text, ratio_bootstrap,
                                  text_intervals)

ALPHABET = list('abcde ABC,.-  \t\n') + ['\u00e9', 'e\u0301', '\u6771', '\u4eac', '\u00df', '\u3000']


def edit_distance(a, b) -> int:
    "Levenshtein distance of two sequences by the textbook dynamic programme (unit costs)."
    prev = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        cur = [i]
        for j, y in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != y)))
        prev = cur
    return prev[-1]


def random_pairs(n: int, seed: int = 0) -> tuple[list[str], list[str]]:
    "Reference texts and noisy predictions (substitutions, deletions, insertions, dropped words), some empty."
    rng = np.random.default_rng(seed)
    refs, preds = [], []
    for _ in range(n):
        ref = ''.join(rng.choice(ALPHABET, rng.integers(0, 25)))
        pred = []
        for c in ref:
            u = rng.random()
            pred += [] if u < 0.05 else [str(rng.choice(ALPHABET))] if u < 0.1 else [c, 'x'] if u < 0.13 else [c]
        refs.append(ref)
        preds.append(''.join(pred) if rng.random() > 0.05 else '')
    return refs, preds


def ledger_of(refs, preds) -> pd.DataFrame:
    return pd.DataFrame(dict(image_id=[f'img{i:04d}.png' for i in range(len(refs))], text=refs, pred_text=preds))


def nfc_strip(s: str) -> str:
    "What cvbench compares for CER: NFC text without outer whitespace (jiwer strips it)."
    return unicodedata.normalize('NFC', s).strip()


def test_character_edits_match_rapidfuzz_and_textbook_distance():
    refs, preds = random_pairs(300)
    ev = evaluate_text(ledger_of(refs, preds), n_resamples=10)
    ps = ev.per_sample
    for k, (r, p) in enumerate(zip(refs, preds)):
        r, p = nfc_strip(r), nfc_strip(p)
        ops = Levenshtein.opcodes(r, p)
        s = sum(i2 - i1 for tag, i1, i2, _, _ in ops if tag == 'replace')
        d = sum(i2 - i1 for tag, i1, i2, _, _ in ops if tag == 'delete')
        i = sum(j2 - j1 for tag, _, _, j1, j2 in ops if tag == 'insert')
        assert (ps.char_s[k], ps.char_d[k], ps.char_i[k], ps.ref_chars[k]) == (s, d, i, len(r))
        assert ps.char_errors[k] == edit_distance(r, p)
        assert ps.cer[k] == pytest.approx(edit_distance(r, p) / max(len(r), 1))
        assert ps.exact[k] == (r == p)
    total = sum(edit_distance(nfc_strip(r), nfc_strip(p)) for r, p in zip(refs, preds))
    assert ev.cer == pytest.approx(total / sum(len(nfc_strip(r)) for r in refs))
    assert ev.chars['hits'] == sum(len(nfc_strip(r)) for r in refs) - ev.chars['substitutions'] - ev.chars['deletions']
    assert ev.exact_match == pytest.approx(np.mean([nfc_strip(r) == nfc_strip(p) for r, p in zip(refs, preds)]))


def test_word_edits_match_a_hand_written_word_distance():
    refs, preds = random_pairs(300, seed=1)
    ev = evaluate_text(ledger_of(refs, preds), n_resamples=10)
    words = [(unicodedata.normalize('NFC', r).split(), unicodedata.normalize('NFC', p).split())
             for r, p in zip(refs, preds)]
    errors = [edit_distance(r, p) for r, p in words]
    assert ev.per_sample.word_errors.tolist() == errors
    assert ev.per_sample.ref_words.tolist() == [len(r) for r, _ in words]
    assert ev.wer == pytest.approx(sum(errors) / sum(len(r) for r, _ in words))
    nonempty = [k for k, r in enumerate(refs) if r.split()]  # jiwer's corpus rates agree where it is defined
    r, p = ([unicodedata.normalize('NFC', texts[k]) for k in nonempty] for texts in (refs, preds))
    sub_ev = evaluate_text(ledger_of(r, p), n_resamples=10)
    assert sub_ev.cer == pytest.approx(jiwer.cer(r, p))
    spaced = [[re.sub(r'\s+', ' ', t) for t in texts] for texts in (r, p)]  # jiwer splits words on spaces only
    assert sub_ev.wer == pytest.approx(jiwer.wer(*spaced))


def test_bootstrap_is_a_ratio_of_sums_over_the_same_draws():
    rng = np.random.default_rng(0)
    num, den = rng.integers(0, 5, (2, 40)), rng.integers(1, 30, (2, 40))
    idx = np.random.default_rng(7).integers(0, 40, (200, 40))
    loop = np.array([[num[k, i].sum() / den[k, i].sum() for k in range(2)] for i in idx])
    np.testing.assert_allclose(ratio_bootstrap(num, den, 200, seed=7), loop)
    np.testing.assert_allclose(ratio_bootstrap(num, den, 200, seed=7, max_cells=100), loop)  # chunked: same draws


def test_intervals_contain_the_estimate_and_shrink_with_n():
    widths = {}
    for n in (100, 1600):
        ops = edit_operations(*random_pairs(n, seed=n))
        ci = text_intervals(ops, n_resamples=400, seed=0).set_index('metric')
        assert ((ci.low <= ci.estimate) & (ci.estimate <= ci.high)).all()
        assert (ci.high > ci.low).all()
        widths[n] = ci.high - ci.low
    assert (widths[1600] < widths[100] / 2.5).all()  # about 1/sqrt(16) = 1/4


def test_intervals_are_seeded():
    led = ledger_of(*random_pairs(80))
    a, b = evaluate_text(led, n_resamples=200, seed=1), evaluate_text(led, n_resamples=200, seed=1)
    pd.testing.assert_frame_equal(a.intervals, b.intervals)
    assert not evaluate_text(led, n_resamples=200, seed=2).intervals.low.equals(a.intervals.low)


def test_slices_equal_evaluating_each_subset():
    refs, preds = random_pairs(200, seed=3)
    led = ledger_of(refs, preds)
    font = np.where(np.arange(200) % 4 == 0, 'serif', 'sans')
    samples = led[['image_id', 'text']].assign(path=led.image_id, split='test', font=font, site='A')
    ev = evaluate_text(led, samples.sample(frac=1, random_state=0), n_resamples=50, min_slice_count=60)
    sl = ev.slices.set_index('value')
    assert ev.slices.column.unique().tolist() == ['font']  # a constant column separates nothing
    for v in ('serif', 'sans'):
        alone = evaluate_text(led[font == v], n_resamples=50)
        assert sl.loc[v, 'n'] == (font == v).sum()
        assert sl.loc[v, 'cer'] == pytest.approx(alone.cer) and sl.loc[v, 'wer'] == pytest.approx(alone.wer)
        assert sl.loc[v, 'cer_low'] <= sl.loc[v, 'cer'] <= sl.loc[v, 'cer_high']
    assert sl.too_small.to_dict() == {'sans': False, 'serif': True}
    only = evaluate_text(led, samples, n_resamples=20, slice_columns=['site'])
    assert len(only.slices) == 0
    with pytest.raises(LedgerError, match='camera'):
        evaluate_text(led, samples, n_resamples=20, slice_columns=['camera'])
    with pytest.raises(LedgerError, match='not in the samples table'):
        evaluate_text(led, samples.iloc[1:], n_resamples=20)


@pytest.mark.parametrize('ref, pred, cer, wer', [
    ('hello world', 'hello world', 0.0, 0.0),  # identical
    ('hello world', '', 1.0, 1.0),  # empty prediction: every character deleted
    ('', 'abc', 3.0, 1.0),  # empty reference: edits over max(length, 1)
    ('', '', 0.0, 0.0),
    ('  hello ', 'hello', 0.0, 0.0),  # outer whitespace is not text
    ('Stra\u00dfe', 'Strasse', 2 / 6, 1.0),  # one code point for two
    ('\u6771\u4eac\u90fd', '\u6771\u4eac', 1 / 3, 1.0),  # CJK: characters are ideographs, a line is one word
    ('cr\u00e8me br\u00fbl\u00e9e', 'cre\u0300me bru\u0302le\u0301e', 0.0, 0.0),  # NFD prediction, NFC reference
])
def test_one_sample_cases(ref, pred, cer, wer):
    ev = evaluate_text(pd.DataFrame(dict(image_id=['a'], text=[ref], pred_text=[pred])), n_resamples=20)
    assert (ev.cer, ev.wer) == (pytest.approx(cer), pytest.approx(wer))
    assert (ev.per_sample.cer[0], ev.per_sample.wer[0]) == (pytest.approx(cer), pytest.approx(wer))
    assert (ev.intervals.low == ev.intervals.estimate).all()  # one sample: nothing to resample
    assert ev.exact_match == (cer == 0)


def test_normalization_can_be_turned_off():
    led = pd.DataFrame(dict(image_id=['a'], text=['caf\u00e9'], pred_text=['cafe\u0301']))
    assert evaluate_text(led, n_resamples=10).cer == 0
    raw = evaluate_text(led, n_resamples=10, form=None)
    assert (raw.chars['substitutions'], raw.chars['insertions'], raw.cer) == (1, 1, 0.5)


def test_empty_references_count_insertions_without_length():
    led = pd.DataFrame(dict(image_id=['a', 'b', 'c'], text=['', 'abcd', ''], pred_text=['xy', 'abcf', '']))
    ev = evaluate_text(led, n_resamples=10)
    assert ev.cer == pytest.approx((2 + 1) / 4)
    assert ev.per_sample.cer.tolist() == [2.0, 0.25, 0.0]
    assert 'empty reference' in ev.notes[0]
    assert ev.worst.image_id.tolist() == ['a', 'b']  # the hallucination first; exact samples are not listed


@pytest.mark.parametrize('col, bad', [('text', None), ('text', np.nan), ('pred_text', None), ('pred_text', 3.5)])
def test_missing_text_names_the_image(col, bad):
    led = pd.DataFrame(dict(image_id=['a.png', 'b.png', 'c.png'], text=['x', 'y', 'z'], pred_text=['x', 'y', 'z']))
    led[col] = led[col].astype(object)
    led.loc[1, col] = bad
    with pytest.raises(LedgerError, match=rf"`{col}` is not text for 1 image\(s\), e\.g\. \['b\.png'\]"):
        evaluate_text(led)


def test_bad_ledgers():
    led = pd.DataFrame(dict(image_id=['a', 'a'], text=['x', 'y'], pred_text=['x', 'y']))
    with pytest.raises(LedgerError, match='duplicate image_id'):
        check_text_ledger(led)
    with pytest.raises(LedgerError, match=r"lacks column\(s\) \['pred_text'\]"):
        check_text_ledger(led.drop(columns='pred_text'))
    with pytest.raises(LedgerError, match='no rows'):
        check_text_ledger(led.iloc[:0])


def test_save_writes_metrics_and_per_sample_csv(tmp_path):
    refs = ['a, "quoted" line', 'line\ttwo', '\u6771\u4eac', '']
    preds = ['a, "quoted" lime', 'line two', '\u6771', 'noise']
    ev = evaluate_text(ledger_of(refs, preds), n_resamples=30)
    p = ev.save(tmp_path / 'eval', model='tesseract')
    m = json.loads(p.read_text())  # strict JSON
    assert (m['task'], m['n'], m['model']) == ('text', 4, 'tesseract')
    assert m['cer'] == pytest.approx(ev.cer) and m['chars'] == ev.chars
    assert [r['metric'] for r in m['intervals']] == ['cer', 'wer', 'exact_match']
    assert m['worst'][0]['image_id'] == 'img0003.png'
    back = pd.read_csv(tmp_path / 'eval' / PER_SAMPLE_FILE, keep_default_na=False)
    assert back.text.tolist() == refs and back.pred_text.tolist() == preds
    assert back.char_errors.tolist() == ev.per_sample.char_errors.tolist()
    assert not list((tmp_path / 'eval').glob('.*tmp'))
    assert ev.headline() == dict(cer=ev.cer, wer=ev.wer, exact_match=ev.exact_match, n=4)
    assert '**cer**' in ev._repr_markdown_()
