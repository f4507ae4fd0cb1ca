"Detection metrics against pycocotools (the oracle): 12 stats, precision and recall arrays, cached matches, weights."
import contextlib, io, json

import numpy as np
import pandas as pd
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from cvbench.data.samples import Samples
from cvbench.evaluate import detection as D
from cvbench.evaluate.ledger import LedgerError, coco_results, read_coco_results, results_ledger


def scene(seed=0, n_img=30, n_cat=4, crowd=0.1, ties=False, many=False, exact_areas=False):
    "A random COCO dataset and results with the corner cases: crowds, empty images, unseen classes, ties, > 100 dets."
    rng = np.random.default_rng(seed)
    images = [dict(id=i + 1, width=200, height=200) for i in range(n_img)]
    cats = [dict(id=c + 1, name=f'c{c}') for c in range(n_cat + 1)]  # the last category never has objects
    anns, res = [], []
    for im in images:
        if rng.random() < 0.15:  # an image without objects (but maybe with detections)
            k = 0
        else:
            k = rng.integers(1, 8)
        for _ in range(k):
            if exact_areas and rng.random() < 0.5:
                s = float(rng.choice([32, 96]))
                w, h = s, s
            else:
                w, h = rng.uniform(2, 120, 2)
            x, y = rng.uniform(0, 200 - w), rng.uniform(0, 200 - h)
            c = int(rng.integers(1, n_cat + 1))
            anns.append(dict(id=len(anns) + 1, image_id=im['id'], category_id=c, bbox=[x, y, w, h], area=w * h,
                             iscrowd=int(rng.random() < crowd)))
            for _ in range(rng.integers(0, 3)):
                j = rng.normal(0, 0.08 * w, 4)
                cat = c if rng.random() < 0.85 else int(rng.integers(1, n_cat + 2))
                res.append(dict(image_id=im['id'], category_id=cat,
                                bbox=[x + j[0], y + j[1], max(w + j[2], 1.0), max(h + j[3], 1.0)],
                                score=float(rng.random())))
        n_fp = 120 if many and rng.random() < 0.3 else int(rng.integers(0, 6))
        for _ in range(n_fp):
            w, h = rng.uniform(2, 100, 2)
            res.append(dict(image_id=im['id'], category_id=int(rng.integers(1, n_cat + 2)),
                            bbox=[float(rng.uniform(0, 100)), float(rng.uniform(0, 100)), float(w), float(h)],
                            score=float(rng.random())))
    if ties:
        for r in res:
            r['score'] = round(r['score'], 1)
    return dict(images=images, categories=cats, annotations=anns), res


def pycoco(gt, res, img_ids=None):
    "pycocotools' evaluator, evaluated and accumulated (empty results as an empty detection set)."
    with contextlib.redirect_stdout(io.StringIO()):
        G = COCO()
        G.dataset = json.loads(json.dumps(gt))
        G.createIndex()
        if res:
            Dt = G.loadRes(json.loads(json.dumps(res)))
        else:
            Dt = COCO()
            Dt.dataset = dict(images=gt['images'], categories=gt['categories'], annotations=[])
            Dt.createIndex()
        E = COCOeval(G, Dt, 'bbox')
        if img_ids is not None:
            E.params.imgIds = img_ids
        E.evaluate()
        E.accumulate()
        E.summarize()
    return E


def samples_of(gt, meta=None):
    "Detection `Samples` of a COCO dict (category ids and image ids kept)."
    df = pd.DataFrame(dict(image_id=[f'im{i["id"]}' for i in gt['images']],
                           path=[f'{i["id"]}.jpg' for i in gt['images']],
                           split='valid', width=[i['width'] for i in gt['images']],
                           height=[i['height'] for i in gt['images']], coco_id=[i['id'] for i in gt['images']]))
    for k, v in (meta or {}).items():
        df[k] = v
    names = {c['id']: c['name'] for c in gt['categories']}
    a = gt['annotations']
    objs = pd.DataFrame(dict(image_id=[f'im{x["image_id"]}' for x in a], object_id=[x['id'] for x in a],
                             label=[names[x['category_id']] for x in a], x=[x['bbox'][0] for x in a],
                             y=[x['bbox'][1] for x in a], w=[x['bbox'][2] for x in a], h=[x['bbox'][3] for x in a],
                             iscrowd=[x['iscrowd'] for x in a], area=[x['area'] for x in a], segmentation=None))
    if not len(a):
        objs = objs.astype(dict(object_id='int64', iscrowd='int64', x=float, y=float, w=float, h=float, area=float))
    return Samples(df, '.', task='detection', objects=objs, classes=[c['name'] for c in gt['categories']],
                   category_ids={c['name']: c['id'] for c in gt['categories']})


def assert_same(e, E):
    "cvbench's evaluation equals pycocotools' bit for bit: 12 stats, precision and recall arrays."
    assert np.array_equal(e.precision, E.eval['precision'])
    assert np.array_equal(e.recall, E.eval['recall'])
    assert list(e.coco_stats.values()) == E.stats.tolist()
    assert e.to_dict()['coco_stats'] == E.stats.tolist()


CASES = dict(plain={}, crowds=dict(crowd=0.4), ties=dict(ties=True), many=dict(many=True),
             exact_areas=dict(exact_areas=True), everything=dict(crowd=0.2, ties=True, many=True, exact_areas=True))


@pytest.mark.parametrize('case', list(CASES))
@pytest.mark.parametrize('backend', ['hotcoco', 'pycocotools'])
def test_stats_and_arrays_equal_pycocotools(case, backend):
    for seed in range(3):
        gt, res = scene(seed, **CASES[case])
        s = samples_of(gt)
        e = D.evaluate_detection(s, results_ledger(res, s), n_resamples=0, backend=backend)
        assert_same(e, pycoco(gt, res))


def test_empty_results_and_no_objects():
    gt, res = scene(1)
    s = samples_of(gt)
    e = D.evaluate_detection(s, results_ledger([], s), n_resamples=20)
    assert_same(e, pycoco(gt, []))
    assert e.coco_stats['AP'] == 0.0
    empty = dict(gt, annotations=[])
    s0 = samples_of(empty)
    e0 = D.evaluate_detection(s0, results_ledger(res, s0), n_resamples=20)
    assert_same(e0, pycoco(empty, res))
    assert e0.coco_stats['AP'] == -1.0


def test_exact_area_boundaries():
    "Objects of area exactly 32^2 and 96^2 fall in both neighbouring ranges, as in pycocotools."
    gt = dict(images=[dict(id=1, width=300, height=300)], categories=[dict(id=1, name='a')],
              annotations=[dict(id=1, image_id=1, category_id=1, bbox=[0, 0, 32, 32], area=1024.0, iscrowd=0),
                           dict(id=2, image_id=1, category_id=1, bbox=[100, 100, 96, 96], area=9216.0, iscrowd=0)])
    res = [dict(image_id=1, category_id=1, bbox=[0, 0, 32, 32], score=0.9),
           dict(image_id=1, category_id=1, bbox=[100, 100, 96, 96], score=0.8)]
    s = samples_of(gt)
    e = D.evaluate_detection(s, results_ledger(res, s), n_resamples=0)
    assert_same(e, pycoco(gt, res))
    assert min(e.coco_stats['AP_small'], e.coco_stats['AP_medium'], e.coco_stats['AP_large']) > 0.99
    assert e.per_class['AP_medium'].item() > 0.99  # both objects are medium: 32^2 and 96^2 are inside [32^2, 96^2]


def test_annotation_id_zero_is_renumbered():
    "pycocotools stores a match as the object's id and reads 0 as 'unmatched': source id 0 must not change AP."
    gt = dict(images=[dict(id=1, width=100, height=100)], categories=[dict(id=1, name='a')],
              annotations=[dict(id=0, image_id=1, category_id=1, bbox=[10, 10, 20, 20], area=400.0, iscrowd=0)])
    res = [dict(image_id=1, category_id=1, bbox=[10, 10, 20, 20], score=0.9),
           dict(image_id=1, category_id=1, bbox=[11, 10, 20, 20], score=0.8)]
    s = samples_of(gt)
    e = D.evaluate_detection(s, results_ledger(res, s), n_resamples=0)
    assert e.coco_stats['AP50'] == pytest.approx(1.0, abs=1e-12)
    raw = pycoco(gt, res)  # pycocotools on the raw file: the id-0 object can be matched twice
    renumbered = pycoco(dict(gt, annotations=[dict(gt['annotations'][0], id=1)]), res)
    assert e.coco_stats['AP'] == renumbered.stats[0] and raw.stats[0] != renumbered.stats[0]


@pytest.mark.parametrize('seed', range(4))
def test_cached_matches_equal_backend_entries(seed):
    "The numpy matcher gives pycocotools' per-image matches, and re-accumulating them gives its arrays bit for bit."
    gt, res = scene(seed, crowd=0.2, ties=True, many=True, exact_areas=True)
    E = pycoco(gt, res)
    p = E.params
    n_img, n_area = len(p.imgIds), len(p.areaRng)
    entries = [E.evalImgs[k * n_area * n_img + i] for k in range(len(p.catIds)) for i in range(n_img)]
    ref = D.match_cache(entries, p.imgIds, p.catIds, len(p.iouThrs))
    gts, dts = D.coco_arrays(gt, res, p.imgIds, p.catIds)
    mine = D.box_matches(gts, dts, n_img, len(p.catIds), p.iouThrs)
    for key in ref:
        assert np.array_equal(mine[key], ref[key]), key
    prec, rec = D.accumulate(mine, np.ones(n_img), p.recThrs)
    assert np.array_equal(prec[0], E.eval['precision'][..., 0, -1])
    assert np.array_equal(rec[0], E.eval['recall'][..., 0, -1])


def test_resample_equals_duplicated_dataset():
    "Weights 2, 0, 1, ... give the precision array and AP of pycocotools on the dataset with those copies."
    gt, res = scene(5, crowd=0.2, many=True)
    n = len(gt['images'])
    w = np.random.default_rng(0).integers(0, 3, n)
    images, anns, dres = [], [], []
    for i, im in enumerate(gt['images']):
        for c in range(w[i]):
            new = im['id'] * 10 + c  # copies sort next to each other, as the weights' cumulative sums assume
            images.append(dict(im, id=new))
            anns += [dict(a, id=len(anns) + 1 + j, image_id=new) for j, a in
                     enumerate(x for x in gt['annotations'] if x['image_id'] == im['id'])]
            dres += [dict(r, image_id=new) for r in res if r['image_id'] == im['id']]
    E = pycoco(dict(gt, images=images, annotations=anns), dres)
    s = samples_of(gt)
    cache, _ = D._cached_matches(D.coco_ground_truth(s), coco_results(results_ledger(res, s), s),
                                 D.run_backend(D.coco_ground_truth(s), []), 'bbox')
    prec, rec = D.accumulate(cache, w, E.params.recThrs)
    assert np.array_equal(prec[0], E.eval['precision'][..., 0, -1])
    assert np.array_equal(rec[0], E.eval['recall'][..., 0, -1])
    ap = D.weighted_ap(cache, w, E.params.recThrs, E.params.iouThrs)
    assert ap['AP'][0] == pytest.approx(E.stats[0], abs=1e-12)
    assert ap['AP50'][0] == pytest.approx(E.stats[1], abs=1e-12)


def test_slices_equal_pycocotools_on_the_slice_images():
    gt, res = scene(7, n_img=40)
    light = np.where(np.arange(40) % 3 == 0, 'night', 'day')
    s = samples_of(gt, dict(lighting=light))
    e = D.evaluate_detection(s, results_ledger(res, s), n_resamples=0, min_slice_count=5)
    for v in ('day', 'night'):
        ids = [im['id'] for im, l in zip(gt['images'], light) if l == v]
        E = pycoco(gt, res, img_ids=ids)
        row = e.slices.query('column == "lighting" and value == @v').iloc[0]
        assert row['AP'] == pytest.approx(E.stats[0], abs=1e-12)
        assert row['AP50'] == pytest.approx(E.stats[1], abs=1e-12)
        assert row['n_images'] == len(ids)
    sizes = e.slices.query('column == "object_size"').set_index('value')['AP']
    assert sizes['small'] == e.coco_stats['AP_small']
    withci = D.evaluate_detection(s, results_ledger(res, s), n_resamples=0, slice_resamples=100)
    light_rows = withci.slices.query('column == "lighting"')
    assert (light_rows['AP_low'] <= light_rows['AP']).all() and (light_rows['AP'] <= light_rows['AP_high']).all()


def test_intervals_cover_and_reproduce():
    gt, res = scene(3, n_img=60)
    s = samples_of(gt)
    led = results_ledger(res, s)
    a = D.evaluate_detection(s, led, n_resamples=200, seed=1)
    b = D.evaluate_detection(s, led, n_resamples=200, seed=1)
    pd.testing.assert_frame_equal(a.intervals, b.intervals)
    ci = a.intervals.set_index('metric')
    for m in ('AP', 'AP50', 'AP75'):
        assert ci.loc[m, 'low'] <= a.coco_stats[m] <= ci.loc[m, 'high']
        assert ci.loc[m, 'high'] - ci.loc[m, 'low'] > 0
    assert {f'AP/c{k}' for k in range(4)} <= set(ci.index)
    # the cached matches travel with the evaluation (paired comparisons and gates re-weight them)
    assert a.image_ids == [f'im{i["id"]}' for i in gt['images']]
    w = D.weighted_ap(a.cache, np.ones(len(a.image_ids)), a.params['rec_thrs'], a.params['iou_thrs'])
    assert w['AP'][0] == pytest.approx(a.coco_stats['AP'], abs=1e-12)


def _voc_reference(tp, n_gt, use_07):
    "The classic py-faster-rcnn `voc_ap` on one class's detections sorted by score (true positive flags)."
    fp = np.cumsum(1 - tp)
    tp = np.cumsum(tp)
    rec = tp / float(n_gt)
    prec = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    if use_07:
        ap = 0.0
        for t in np.arange(0.0, 1.1, 0.1):
            p = 0 if np.sum(rec >= t) == 0 else np.max(prec[rec >= t])
            ap = ap + p / 11.0
        return ap
    mrec = np.concatenate(([0.0], rec, [1.0]))
    mpre = np.concatenate(([0.0], prec, [0.0]))
    for i in range(mpre.size - 1, 0, -1):
        mpre[i - 1] = np.maximum(mpre[i - 1], mpre[i])
    i = np.where(mrec[1:] != mrec[:-1])[0]
    return np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1])


def test_voc_ap_matches_reference():
    rng = np.random.default_rng(0)
    for _ in range(20):
        tp = (rng.random(rng.integers(1, 40)) < 0.5).astype(float)
        n_gt = int(tp.sum()) + int(rng.integers(0, 5)) or 1
        ap11, ap = D.voc_ap(np.cumsum(tp), np.cumsum(1 - tp), n_gt)
        assert ap11 == pytest.approx(_voc_reference(tp, n_gt, True), abs=1e-12)
        assert ap == pytest.approx(_voc_reference(tp, n_gt, False), abs=1e-12)


def test_thresholds_at_target_recall_brute_force():
    "Score threshold and FP per image at recall 0.5, against a direct count over pycocotools' matches at IoU 0.5."
    gt, res = scene(11, n_img=50)
    s = samples_of(gt)
    e = D.evaluate_detection(s, results_ledger(res, s), n_resamples=0, target_recall=0.5)
    E = pycoco(gt, res)
    p = E.params
    n_img, n_area = len(p.imgIds), len(p.areaRng)
    for k, c in enumerate(p.catIds[:-1]):
        ents = [x for x in E.evalImgs[k * n_area * n_img:(k * n_area + 1) * n_img] if x is not None]
        sc = np.concatenate([x['dtScores'] for x in ents])
        m = np.concatenate([x['dtMatches'][0] for x in ents]) > 0
        ig = np.concatenate([x['dtIgnore'][0] for x in ents]).astype(bool)
        npig = sum(int((np.asarray(x['gtIgnore']) == 0).sum()) for x in ents)
        row = e.thresholds.set_index('class').loc[f'c{k}']
        keep = ~ig & (sc >= row['score_threshold'])
        assert (m & keep).sum() / npig >= 0.5
        assert row['fp_per_image'] == pytest.approx((~m & keep).sum() / n_img)
        stricter = ~ig & (sc > row['score_threshold'])
        assert (m & stricter).sum() / npig < 0.5  # the highest threshold that reaches the target


def test_save_and_to_dict(tmp_path):
    gt, res = scene(2)
    s = samples_of(gt, dict(camera=np.where(np.arange(30) < 15, 'a', 'b')))
    e = D.evaluate_detection(s, results_ledger(res, s), n_resamples=50)
    m = json.loads(e.save(tmp_path).read_text())
    assert m['coco_stats'] == list(e.coco_stats.values()) and len(m['coco_stats']) == 12
    assert m['coco_stat_names'] == list(D.STAT_NAMES)
    assert {r['class'] for r in m['per_class']} == set(s.classes)
    assert (tmp_path / 'per_class.csv').is_file() and (tmp_path / 'pr_curves.csv').is_file()
    assert e.headline()['ap50'] == e.coco_stats['AP50']
    assert 'AP50' in e._repr_markdown_() and '| c0' in e._repr_markdown_()


def test_bad_results_are_refused(tmp_path):
    gt, res = scene(0)
    s = samples_of(gt)
    p = tmp_path / 'r.json'
    p.write_text(json.dumps(res + [dict(image_id=999, category_id=1, bbox=[0, 0, 1, 1], score=0.1)]))
    with pytest.raises(LedgerError, match=r'image id\(s\) not in the dataset, e.g. \[999\]'):
        read_coco_results(p, s)
    p.write_text(json.dumps([dict(image_id=1, category_id=42, bbox=[0, 0, 1, 1], score=0.1)]))
    with pytest.raises(LedgerError, match='category id'):
        read_coco_results(p, s)
    p.write_text('[{"image_id": 1, "category_id": 1, "bbox": [0, 0, 1, 1], "score": NaN}]')
    with pytest.raises(LedgerError, match='NaN or infinite'):
        read_coco_results(p, s)
    p.write_text('[]')
    assert len(read_coco_results(p, s)) == 0
    led = results_ledger(res, s)
    with pytest.raises(D.DetectionError, match="image\\(s\\) not in the samples, e.g. 'nope'"):
        D.evaluate_detection(s, led.assign(image_id=['nope'] + led['image_id'].tolist()[1:]), n_resamples=0)
    with pytest.raises(D.DetectionError, match=r"slice column\(s\) \['site'\]"):
        D.evaluate_detection(s, led, n_resamples=0, slice_columns=['site'])
    bad = s.objects.copy()
    bad.loc[0, 'area'] = np.nan
    with pytest.raises(D.DetectionError, match='area'):
        D.coco_ground_truth(Samples(s.df, '.', task='detection', objects=bad, classes=s.classes,
                                    category_ids=s.category_ids))


def test_faster_coco_eval_close():
    "faster-coco-eval is a fallback: equal to pycocotools to 1e-12 (it can differ in the last bit)."
    gt, res = scene(4)
    s = samples_of(gt)
    e = D.evaluate_detection(s, results_ledger(res, s), n_resamples=0, backend='faster-coco-eval')
    E = pycoco(gt, res)
    np.testing.assert_allclose(e.precision, E.eval['precision'], atol=1e-12)
    np.testing.assert_allclose(list(e.coco_stats.values()), E.stats, atol=1e-12)


def test_segm_equals_pycocotools():
    "Masks (polygons): hotcoco's stats and arrays equal pycocotools' segm evaluation; intervals come from its matches."
    rng = np.random.default_rng(0)
    rows, dets = [], []
    for i in range(20):
        for j in range(3):
            x, y, w, h = (float(v) for v in rng.uniform(0, 60, 4) + [0, 0, 10, 10])
            seg = json.dumps([[x, y, x + w, y, x + w * 0.8, y + h, x, y + h * 0.9]])
            rows.append(dict(image_id=f'i{i}', object_id=len(rows), label='ab'[j % 2], x=x, y=y, w=w, h=h, iscrowd=0,
                             area=w * h * 0.85, segmentation=seg))
            if rng.random() < 0.8:
                dseg = json.dumps([[x + 1, y, x + w, y, x + w * 0.8, y + h, x + 1, y + h * 0.9]])
                dets.append(dict(image_id=f'i{i}', label='ab'[j % 2], score=float(rng.random()), x=x + 1, y=y, w=w, h=h,
                                 segmentation=dseg))
    df = pd.DataFrame(dict(image_id=[f'i{i}' for i in range(20)], path=[f'{i}.jpg' for i in range(20)], split='valid',
                           width=128, height=128))
    s = Samples(df, '.', task='detection', objects=pd.DataFrame(rows))
    led = pd.DataFrame(dets)
    e = D.evaluate_detection(s, led, n_resamples=50, iou_type='segm')
    with contextlib.redirect_stdout(io.StringIO()):
        G = COCO()
        G.dataset = D.coco_ground_truth(s, segmentation=True)
        G.createIndex()
        E = COCOeval(G, G.loadRes(coco_results(led, s)), 'segm')
        E.evaluate()
        E.accumulate()
        E.summarize()
    assert_same(e, E)
    ci = e.intervals.set_index('metric')
    assert ci.loc['AP', 'low'] <= e.coco_stats['AP'] <= ci.loc['AP', 'high']
