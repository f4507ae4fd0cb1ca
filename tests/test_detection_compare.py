"Detection comparisons and gates, and the detection report: paired intervals, slice rules, gate errors, HTML sections."

import contextlib, io, re
from pathlib import Path
import numpy as np, pandas as pd, pytest
from cvbench.core import ConfigError, CvbenchError
from cvbench.data.samples import Samples
from cvbench.evaluate.compare import compare_detection, keep_matches, load_gate
from cvbench.evaluate.detection import evaluate_detection
from cvbench.evaluate.ledger import LedgerError, coco_results

# --- gate files for a detection comparison: every mistake is one clear message ---
DETECTION_GATE_CASES = {
    'classification_metric': ('metrics:\n  accuracy: {max_drop: 0}\n',
                              '`accuracy` is a classification metric, and this is a detection comparison'),
    'unknown_metric': ('metrics:\n  mAP: {max_drop: 0}\n', 'unknown metric `mAP`'),
    'slice_metric': ('slices: {metric: macro_f1}\n', 'slices.metric'),
    'string_drop': ('metrics:\n  ap50: {max_drop: lots}\n', 'must be a number'),
    'drop_above_one': ('metrics:\n  ap: {max_drop: 5}\n', 'between 0 and 1'),
    'fpr_limit': ('operating_points:\n  - {class: person, recall: 0.9, max_fpr: 0.1}\n',
                  'limited by `max_fp_per_image`'),
    'op_missing_key': ('operating_points:\n  - {class: person, recall: 0.9}\n',
                       'needs class, recall and max_fp_per_image'),
    'negative_fp': ('operating_points:\n  - {class: person, recall: 0.9, max_fp_per_image: -1}\n', 'must be a number'),
    'recall_above_one': ('operating_points:\n  - {class: person, recall: 90, max_fp_per_image: 1}\n', 'recall'),
    'regression_sets': ('regression_sets: {min_accuracy: 1}\n', 'classification'),
    'unknown_section': ('slice: {max_drop: 0}\n', "unknown key(s) ['slice']"),
    'unknown_slice_key': ('slices: {metric: ap50, value: night}\n', "unknown key(s) ['value']"),
}


@pytest.mark.parametrize('case', DETECTION_GATE_CASES)
def test_bad_detection_gate(case, tmp_path):
    text, expect = DETECTION_GATE_CASES[case]
    (tmp_path / 'gate.yaml').write_text(text)
    with pytest.raises(ConfigError) as e:
        load_gate(tmp_path / 'gate.yaml', task='detection')
    assert expect in str(e.value)


def test_detection_gate_accepted_and_classification_unchanged():
    g = dict(metrics={'ap': {'max_drop': 0}, 'ap50': {'max_drop': 0.01}},
             slices={'metric': 'ap50', 'max_drop': 0, 'min_count': 10, 'columns': ['lighting']},
             operating_points=[{'class': 'circle', 'recall': 0.9, 'max_fp_per_image': 0.1}])
    assert load_gate(g, task='detection') == g
    with pytest.raises(ConfigError, match='`ap` is a detection metric'):
        load_gate(dict(metrics={'ap': {'max_drop': 0}}))  # a detection gate on a classification comparison
    assert load_gate(dict(metrics={'accuracy': {'max_drop': 0}}))['metrics']['accuracy'] == {'max_drop': 0}


# --- simulated detectors on table-only scenes (no image files: the comparison needs only the tables) ---
def _scenes(n=300, seed=0, night=0.33):
    rng = np.random.default_rng(seed)
    df = pd.DataFrame(dict(image_id=[f'im{i}' for i in range(n)], path='', split='valid', width=200, height=150,
                           lighting=rng.choice(['day', 'night'], n, p=[1 - night, night])))
    img = np.repeat(df.image_id.to_numpy(), rng.integers(1, 5, n))
    k = len(img)
    w, h = rng.uniform(20, 60, k), rng.uniform(20, 60, k)
    objs = pd.DataFrame(dict(image_id=img, object_id=np.arange(1, k + 1), label=rng.choice(['car', 'person'], k),
                             x=rng.uniform(0, 140, k), y=rng.uniform(0, 90, k), w=w, h=h, iscrowd=0, area=w * h,
                             segmentation=None))
    return Samples(df, '.', task='detection', classes=['car', 'person'], objects=objs)


def _detector(samples, seed, miss=(0.1, 0.1), jitter=0.04, fp_rate=0.5):
    "Misses per lighting (day, night), box jitter, scores higher for found objects, background false positives."
    rng = np.random.default_rng(seed)
    o = samples.objects
    night = o.image_id.map(samples.df.set_index('image_id').lighting).eq('night').to_numpy()
    keep = rng.random(len(o)) >= np.where(night, miss[1], miss[0])
    j = rng.normal(0, jitter, (len(o), 4)) * o[['w', 'h', 'w', 'h']].to_numpy()
    tp = pd.DataFrame(dict(image_id=o.image_id, label=o.label, score=rng.uniform(0.4, 1, len(o)), x=o.x + j[:, 0],
                           y=o.y + j[:, 1], w=(o.w + j[:, 2]).clip(2), h=(o.h + j[:, 3]).clip(2)))[keep]
    m = int(len(samples.df) * fp_rate)
    fp = pd.DataFrame(dict(image_id=rng.choice(samples.df.image_id, m), label=rng.choice(samples.classes, m),
                           score=rng.uniform(0, 0.7, m), x=rng.uniform(0, 150, m), y=rng.uniform(0, 100, m), w=30.0,
                           h=30.0))
    return pd.concat([tp, fp], ignore_index=True)


def _evaluate(samples, ledger):
    return keep_matches(evaluate_detection(samples, ledger, n_resamples=0), samples, ledger)


def _subset(samples, ids):
    keep = samples.df.image_id.isin(ids)
    return Samples(samples.df[keep], '.', task='detection', classes=samples.classes,
                   objects=samples.objects[samples.objects.image_id.isin(ids)])


@pytest.fixture(scope='module')
def night_regression():
    "A candidate that finds more objects by day and fewer at night than the baseline."
    s = _scenes()
    base, cand = _detector(s, 1, miss=(0.2, 0.2)), _detector(s, 2, miss=(0.04, 0.3))
    return s, base, cand, _evaluate(s, base), _evaluate(s, cand)


def test_night_only_regression_fails_the_slice_rule_and_passes_the_overall_rule(night_regression):
    s, base, cand, eb, ec = night_regression
    gate = dict(metrics={'ap50': {'max_drop': 0.0}}, slices={'metric': 'ap50', 'max_drop': 0.0, 'min_count': 50})
    c = compare_detection(eb, ec, gate, n_resamples=300)
    assert c.checks.rule.tolist() == ['metric ap50', 'slices ap50']
    assert c.checks.passed.tolist() == [True, False] and not c.passed
    assert 'lighting=night' in c.checks.detail[1] and 'lighting=day' not in c.checks.detail[1]
    sl = c.slices.set_index('value')
    assert sl.high['night'] < 0 < sl.low['day']  # night significantly worse, day significantly better
    # the point estimates are the evaluations' own numbers (all images common)
    m = c.metrics.set_index('metric')
    for name, stat in (('ap', 'AP'), ('ap50', 'AP50'), ('ap75', 'AP75')):
        assert abs(m.baseline[name] - eb.coco_stats[stat]) < 1e-12
        assert abs(m.candidate[name] - ec.coco_stats[stat]) < 1e-12
    pc = c.per_class.set_index('class')
    np.testing.assert_allclose(pc.baseline, eb.per_class.set_index('class').AP[pc.index], atol=1e-12)
    # each slice's point estimate is the evaluation's own slice AP50
    own = eb.slices[eb.slices.column == 'lighting'].set_index('value').AP50
    np.testing.assert_allclose(sl.baseline[own.index], own, atol=1e-12)
    assert 'Decision: FAIL' in c.to_markdown() and c.to_dict()['task'] == 'detection'


def test_operating_point_rule_reads_fp_per_image_at_the_recall(night_regression):
    s, base, cand, eb, ec = night_regression
    ok = dict(operating_points=[{'class': 'person', 'recall': 0.7, 'max_fp_per_image': 1.0}])
    strict = dict(operating_points=[{'class': 'person', 'recall': 0.7, 'max_fp_per_image': 0.0}])
    a, b = compare_detection(eb, ec, ok, n_resamples=10), compare_detection(eb, ec, strict, n_resamples=10)
    assert a.passed and not b.passed
    # independent count: the candidate's person detections scored at least the threshold, not matched (IoU 0.5)
    thr = float(a.checks.detail[0].split('threshold ')[1].split(',')[0])
    fp = _false_positives(s, cand[(cand.label == 'person') & (cand.score >= thr - 5e-5)], 'person')
    assert abs(a.checks.value[0] - fp / len(s.df)) < 0.02


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    "IoU of every xywh box of `a` with every xywh box of `b`."
    ax2, ay2, bx2, by2 = a[:, 0] + a[:, 2], a[:, 1] + a[:, 3], b[:, 0] + b[:, 2], b[:, 1] + b[:, 3]
    iw = (np.minimum(ax2[:, None], bx2) - np.maximum(a[:, None, 0], b[:, 0])).clip(0)
    ih = (np.minimum(ay2[:, None], by2) - np.maximum(a[:, None, 1], b[:, 1])).clip(0)
    inter = iw * ih
    return inter / (a[:, 2:].prod(1)[:, None] + b[:, 2:].prod(1) - inter)


def _false_positives(samples, dets, cls):
    "Detections of `cls` matched to no object of `cls` at IoU >= 0.5, greedily by score."
    o = samples.objects[samples.objects.label == cls]
    fp = 0
    for img, d in dets.sort_values('score', ascending=False).groupby('image_id', sort=False):
        g = o[o.image_id == img]
        iou = _iou(d[['x', 'y', 'w', 'h']].to_numpy(float), g[['x', 'y', 'w', 'h']].to_numpy(float))
        used = np.zeros(len(g), bool)
        for row in iou:
            free = np.where(~used & (row >= 0.5), row, -1)
            if len(free) and free.max() >= 0.5:
                used[free.argmax()] = True
            else:
                fp += 1
    return fp


def test_paired_interval_contains_the_true_delta():
    "A large population gives the true AP50 delta; intervals from small test sets of it cover it (most of the time)."
    pop = _scenes(n=2000, seed=5)
    base, cand = _detector(pop, 11, miss=(0.15, 0.15)), _detector(pop, 12, miss=(0.1, 0.1), jitter=0.06)
    true = evaluate_detection(pop, cand, n_resamples=0).coco_stats['AP50'] - \
        evaluate_detection(pop, base, n_resamples=0).coco_stats['AP50']
    rng, covered, widths = np.random.default_rng(0), 0, []
    for k in range(6):
        ids = rng.choice(pop.df.image_id, 200, replace=False)
        s = _subset(pop, ids)
        b, c = base[base.image_id.isin(ids)], cand[cand.image_id.isin(ids)]
        d = compare_detection(_evaluate(s, b), _evaluate(s, c), n_resamples=200, seed=k).metrics.set_index('metric')
        covered += d.low['ap50'] <= true <= d.high['ap50']
        widths.append(d.high['ap50'] - d.low['ap50'])
    assert covered >= 5, (covered, true)
    assert 0 < np.mean(widths) < 0.1


def _duplicated(gt: dict, res: list, pick) -> tuple[dict, list]:
    "The COCO dataset and results of the images `pick` (COCO ids, repeats allowed), renumbered 1..n."
    images, anns, dets = [], [], []
    for new, old in enumerate(pick, 1):
        images.append(dict(next(im for im in gt['images'] if im['id'] == old), id=new))
        anns += [dict(a, image_id=new) for a in gt['annotations'] if a['image_id'] == old]
        dets += [dict(r, image_id=new) for r in res if r['image_id'] == old]
    anns = [dict(a, id=k) for k, a in enumerate(anns, 1)]
    return dict(gt, images=images, annotations=anns), dets


def test_paired_resamples_equal_pycocotools_on_duplicated_images(night_regression):
    "Each resample is the COCO evaluation of a dataset with the drawn images repeated: checked with pycocotools."
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval
    from cvbench.evaluate.detection import coco_ground_truth
    from cvbench.evaluate.stats import bootstrap_indices

    s, base, cand, eb, ec = night_regression
    s40 = _subset(s, s.df.image_id[:40])
    b40, c40 = (led[led.image_id.isin(s40.df.image_id)] for led in (base, cand))
    gt, ids = coco_ground_truth(s40), s40.coco_ids().to_numpy()
    slow = []
    for draw in bootstrap_indices(40, 4, seed=3):
        stats = []
        for led in (b40, c40):
            g, r = _duplicated(gt, coco_results(led, s40), ids[draw])
            with contextlib.redirect_stdout(io.StringIO()):
                G = COCO()
                G.dataset = g
                G.createIndex()
                E = COCOeval(G, G.loadRes(r), 'bbox')
                E.evaluate(), E.accumulate(), E.summarize()
            stats.append(E.stats[:3])
        slow.append(np.subtract(*stats[::-1]))
    lo, hi = np.percentile(slow, [2.5, 97.5], axis=0)
    ours = compare_detection(_evaluate(s40, b40), _evaluate(s40, c40), n_resamples=4, seed=3).metrics
    np.testing.assert_allclose(ours.low, lo, atol=1e-12)
    np.testing.assert_allclose(ours.high, hi, atol=1e-12)


def test_image_order_and_common_images(night_regression):
    "The same images in another row order give the same comparison; different image sets need an explicit allowance."
    s, base, cand, eb, ec = night_regression
    shuffled = Samples(s.df.sample(frac=1, random_state=0), '.', task='detection', classes=s.classes, objects=s.objects)
    ec2 = _evaluate(shuffled, cand)
    assert ec2.image_ids != ec.image_ids  # the cached matches are in another image order
    a, b = compare_detection(eb, ec, n_resamples=50), compare_detection(eb, ec2, n_resamples=50)
    pd.testing.assert_frame_equal(a.metrics, b.metrics, atol=1e-12)
    pd.testing.assert_frame_equal(a.slices, b.slices, atol=1e-12)
    ids = s.df.image_id[:200]
    small = _evaluate(_subset(s, ids), base[base.image_id.isin(ids)])
    with pytest.raises(LedgerError, match='100 only in the candidate'):
        compare_detection(small, ec, n_resamples=10)
    part = compare_detection(small, ec, n_resamples=10, allow_data_mismatch=True)
    assert part.notes == ['Compared on the 200 images common to both evaluations.']
    assert part.slices.n.sum() == 200


def test_detection_report_has_its_sections_and_images(tmp_path, night_regression):
    "The report of a detection run on real image files: every detection section, figures on disk and in the HTML."
    from cvbench.data.datasets import synthetic_scenes, simulate_detections
    from cvbench.report.documents import detection_sections, write_report

    s = synthetic_scenes(tmp_path / 'scenes', n=16, seed=0)
    det = simulate_detections(s, seed=1)
    ev = evaluate_detection(s, det, n_resamples=30, min_slice_count=5)
    _, _, _, eb, ec = night_regression
    cmp = compare_detection(eb, ec, dict(slices={'metric': 'ap50', 'max_drop': 0.0, 'min_count': 50}), n_resamples=50)
    secs = detection_sections(ev, s, det, tmp_path / 'report', dict(data='scenes'), comparison=cmp,
                              baseline_name='base', n_worst=6)
    titles = [x.title for x in secs]
    assert titles[0] == 'Release decision' and titles[1] == 'What was evaluated'
    for t in ('COCO metrics', 'Per-class AP', 'Precision-recall and F1 curves', 'Thresholds at the target recall',
              'Detection confusion matrix', 'Error breakdown', 'False positives and missed objects', 'Slices',
              'Comparison with base'):
        assert t in titles, t
    files = write_report(secs, tmp_path / 'report', 'Evaluation: scenes')
    md, page = files['markdown'].read_text(), files['html'].read_text()
    figures = [f for x in secs for f in x.figures]
    assert len(figures) >= 5 and all(Path(f).is_file() and Path(f).stat().st_size > 1000 for f in figures)
    assert page.count('data:image/png;base64,') == len(figures) and '<table>' in page
    assert re.search(rf'\| AP50 +\| +{ev.coco_stats["AP50"]:.4f} \|', md)
    assert md.index('## Release decision') < md.index('## COCO metrics')
    assert 'lighting=night' in md and 'McNemar' not in md


def test_text_report_sections(tmp_path):
    from cvbench.evaluate.ocr import evaluate_text
    from cvbench.report.documents import text_sections, write_report

    tl = pd.DataFrame(dict(image_id=['a', 'b', 'c'], text=['STOP', 'EXIT', 'ONE WAY'],
                           pred_text=['ST0P', 'EXIT', 'ONE']))
    ev = evaluate_text(tl, n_resamples=50)
    page = write_report(text_sections(ev, tl, tmp_path, tmp_path / 'r', {}), tmp_path / 'r', 'OCR')['html'].read_text()
    assert '<h2>Error rates</h2>' in page and '<h2>Worst samples</h2>' in page and 'ST0P' in page


def test_keep_matches_recomputes_the_evaluations_own_matches(night_regression):
    "An evaluation without its matches gets them back from the samples and the ledger: the same AP under any weights."
    from cvbench.evaluate.detection import weighted_ap

    s, base, *_ = night_regression
    e = evaluate_detection(s, base, n_resamples=0)
    own, ids = e.cache, e.image_ids
    assert keep_matches(e, s, base).cache is own  # kept: nothing recomputed
    e.cache = e.image_ids = None
    with pytest.raises(CvbenchError, match='keep_matches'):
        compare_detection(e, e, n_resamples=5)
    k = keep_matches(e, s, base)
    assert k is e and k.image_ids == ids == list(s.df.image_id)  # COCO ids 1..n in row order
    W = np.random.default_rng(0).integers(0, 3, (20, len(ids))).astype(float)
    a = weighted_ap(own, W, e.params['rec_thrs'], e.params['iou_thrs'])
    b = weighted_ap(k.cache, W, e.params['rec_thrs'], e.params['iou_thrs'])
    for m in ('AP', 'AP50', 'AP75', 'per_class'):
        np.testing.assert_allclose(a[m], b[m], atol=1e-12)
