"""Detection error analysis against reference implementations: TIDE's dAPs against `tidecv`, the confusion matrix's
diagonal against pycocotools' matches and its `ultralytics` method against a port of Ultralytics' `ConfusionMatrix`;
degenerate inputs; the detection figures write valid PNGs."""

import math
import matplotlib.pyplot as plt
import numpy as np, pandas as pd
import pytest
from PIL import Image
from cvbench.data.samples import DataError, Samples, empty_objects
from cvbench.evaluate.ledger import LedgerError
from cvbench.evaluate.detection_errors import (ERROR_COLUMNS, ERROR_TYPES, detection_confusion, detection_errors,
                                               error_breakdown)

TOL = 1e-9  # AP points (0..100, TIDE's unit); differences seen are ~1e-14, from the order of summation
TIDE_NAMES = dict(cls='Cls', loc='Loc', both='Both', dupe='Dupe', bkg='Bkg', miss='Miss')


def scene(n_images=40, classes=('cat', 'dog', 'car', 'bus'), seed=0, crowd=0.05, size=200, ties=True, max_objects=6):
    "Random objects and detections near them (jittered, relabelled, duplicated) and on the background."
    rng = np.random.default_rng(seed)
    ids = [f'im{i}' for i in range(n_images)]
    df = pd.DataFrame(dict(image_id=ids, path=[f'{i}.png' for i in ids], split='valid', width=size, height=size))
    objs, dets = [], []
    pick = lambda: classes[rng.integers(len(classes) - 1)]  # noqa: E731 -- the last class never has objects
    score = lambda: round(rng.random(), 2) if ties else rng.random()  # noqa: E731 -- ties on 2 decimals
    for im in ids:
        for _ in range(rng.integers(0, max_objects)):
            x, y = rng.uniform(0, size * 0.7, 2)
            w, h = rng.uniform(10, size * 0.3, 2)
            c = pick()
            objs.append(dict(image_id=im, label=c, x=x, y=y, w=w, h=h, iscrowd=int(rng.random() < crowd)))
            for _ in range(rng.integers(0, 3)):
                j = rng.normal(0, 0.05 if rng.random() < 0.6 else 0.3, 4) * [w, h, w, h]
                lab = c if rng.random() < 0.8 else classes[rng.integers(len(classes))]
                dets.append(dict(image_id=im, label=lab, score=score(), x=x + j[0], y=y + j[1], w=max(w + j[2], 1),
                                 h=max(h + j[3], 1)))
        for _ in range(rng.integers(0, 3)):
            x, y = rng.uniform(0, size * 0.8, 2)
            dets.append(dict(image_id=im, label=classes[rng.integers(len(classes))], score=score(), x=x, y=y,
                             w=rng.uniform(5, 40), h=rng.uniform(5, 40)))
    o = pd.DataFrame(objs) if objs else empty_objects()
    o = o.assign(object_id=np.arange(len(o)) + 1, area=o['w'] * o['h'], segmentation=None)
    led = pd.DataFrame(dets, columns=['image_id', 'label', 'score', 'x', 'y', 'w', 'h'])
    return Samples(df, '.', 'detection', list(classes), objects=o), led


def run_tide(samples, ledger, pos=0.5, bg=0.1):
    "tidecv on the same data: crowd objects become ignore regions of their class, as COCO's crowds."
    from tidecv import TIDE, Data

    gt, pred = Data('gt'), Data('pred')
    cid = {c: i for i, c in enumerate(samples.classes)}
    for c, i in cid.items():
        gt.add_class(i, c)
        pred.add_class(i, c)
    img = {k: i for i, k in enumerate(samples.df['image_id'])}
    for k, i in img.items():
        gt.add_image(i, k)
    for o in samples.objects.itertuples():
        add = gt.add_ignore_region if o.iscrowd else gt.add_ground_truth
        add(img[o.image_id], cid[o.label], [o.x, o.y, o.w, o.h])
    for d in ledger.itertuples():
        pred.add_detection(img[d.image_id], cid[d.label], d.score, [d.x, d.y, d.w, d.h])
    tide = TIDE(pos, bg)
    run = tide.evaluate(gt, pred, mode=TIDE.BOX, name='run')
    return tide, run


def check_against_tidecv(samples, ledger, pos=0.5, bg=0.1):
    "Every number of `error_breakdown` equals tidecv's: AP, main and special dAPs, counts, per-class deltas."
    from tidecv.quantify import TIDE

    eb = error_breakdown(samples, ledger, pos_iou=pos, bg_iou=bg)
    tide, run = run_tide(samples, ledger, pos, bg)
    main, special = tide.get_main_errors()['run'], tide.get_special_errors()['run']
    assert abs(100 * eb.ap - run.ap) < TOL
    for t in ERROR_TYPES:
        assert abs(100 * eb.dap[t] - main[TIDE_NAMES[t]]) < TOL, t
    assert abs(100 * eb.special['false_pos'] - special['FalsePos']) < TOL
    assert abs(100 * eb.special['false_neg'] - special['FalseNeg']) < TOL
    counts = {e.short_name: v for e, v in run.count_errors().items()}
    assert {TIDE_NAMES[k]: v for k, v in eb.counts.items()} == counts
    for e in TIDE._error_types:  # per class: the AP change of each class when one type is fixed
        fixed = run.fix_errors(lambda x, e=e: isinstance(x, e))
        t = next(k for k, v in TIDE_NAMES.items() if v == e.short_name)
        for k, obj in fixed.objs.items():
            if not obj.is_empty() and not run.ap_data.objs[k].is_empty():
                want = obj.get_ap() - run.ap_data.objs[k].get_ap()
                assert abs(100 * eb.per_class[t].iloc[k] - want) < TOL, (t, k)
    return eb


@pytest.mark.parametrize('seed', range(6))
def test_breakdown_equals_tidecv(seed):
    eb = check_against_tidecv(*scene(seed=seed))
    assert min(eb.counts.values()) > 0  # every error type occurs: the comparison covers them all
    assert eb.dap['loc'] > 0 and eb.dap['miss'] > 0


def test_breakdown_equals_tidecv_other_thresholds_and_no_ties():
    check_against_tidecv(*scene(seed=7, ties=False), pos=0.7, bg=0.2)


def test_breakdown_equals_tidecv_beyond_100_detections():
    s, led = scene(n_images=3, seed=3)
    rng = np.random.default_rng(0)
    many = pd.DataFrame(dict(image_id='im0', label=rng.choice(s.classes, 150), score=rng.random(150),
                             x=rng.uniform(0, 150, 150), y=rng.uniform(0, 150, 150), w=30.0, h=30.0))
    check_against_tidecv(s, pd.concat([led, many], ignore_index=True))


def test_breakdown_equals_tidecv_on_synthetic_scenes(tmp_path):
    from cvbench.data.datasets import simulate_detections, synthetic_scenes

    s = synthetic_scenes(tmp_path, n=30, seed=1)
    check_against_tidecv(s, simulate_detections(s, seed=1))


def pycocotools_matches(samples, ledger, iou=0.5):
    "Per class: TPs and non-ignored detections of pycocotools at one IoU, all areas, no detection limit."
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    img = {k: i + 1 for i, k in enumerate(samples.df['image_id'])}
    cid = {c: i + 1 for i, c in enumerate(samples.classes)}
    gt = COCO()
    gt.dataset = dict(images=[dict(id=i, width=200, height=200) for i in img.values()],
                      categories=[dict(id=i, name=c) for c, i in cid.items()],
                      annotations=[dict(id=k + 1, image_id=img[o.image_id], category_id=cid[o.label], iscrowd=o.iscrowd,
                                        bbox=[o.x, o.y, o.w, o.h], area=o.w * o.h)
                                   for k, o in enumerate(samples.objects.itertuples())])
    gt.createIndex()
    res = gt.loadRes([dict(image_id=img[d.image_id], category_id=cid[d.label], bbox=[d.x, d.y, d.w, d.h],
                           score=d.score) for d in ledger.itertuples()]) if len(ledger) else COCO()
    ev = COCOeval(gt, res, 'bbox')
    ev.params.iouThrs, ev.params.maxDets, ev.params.areaRng, ev.params.areaRngLbl = np.array([iou]), [10000], [
        [0, 1e10]], ['all']
    ev.evaluate()
    tp, kept = np.zeros(len(cid), int), np.zeros(len(cid), int)
    for e in ev.evalImgs:
        if e is not None:
            k = e['category_id'] - 1
            tp[k] += int(((e['dtMatches'][0] > 0) & ~e['dtIgnore'][0].astype(bool)).sum())  # not a crowd match
            kept[k] += int((~e['dtIgnore'][0].astype(bool)).sum())
    return tp, kept


@pytest.mark.parametrize('seed', range(3))
def test_confusion_diagonal_is_pycocotools_true_positives(seed):
    s, led = scene(seed=seed, ties=False)
    thr = 0.3
    cm = detection_confusion(s, led, iou=0.5, score_threshold=thr)
    tp, kept = pycocotools_matches(s, led[led['score'] >= thr])
    n = len(s.classes)
    np.testing.assert_array_equal(np.diag(cm)[:n], tp)
    np.testing.assert_array_equal(cm.to_numpy()[:, :n].sum(0), kept)  # every scored detection not on a crowd
    truth = s.objects[s.objects['iscrowd'] == 0]['label'].value_counts().reindex(s.classes, fill_value=0)
    np.testing.assert_array_equal(cm.to_numpy()[:n].sum(1), truth.to_numpy())  # every object once
    assert cm.iloc[:n, :n].to_numpy().sum() > np.trace(cm.to_numpy())  # confusions occur off the diagonal


def ultralytics_matrix(samples, ledger, conf=0.25, iou_thres=0.45):
    "A port of Ultralytics' `ConfusionMatrix.process_batch` (ultralytics/utils/metrics.py), image by image."
    import torch
    from torchvision.ops import box_convert, box_iou

    nc = len(samples.classes)
    cid = {c: i for i, c in enumerate(samples.classes)}
    matrix = np.zeros((nc + 1, nc + 1))  # rows predicted, columns true
    objs = samples.objects[samples.objects['iscrowd'] == 0]
    for im in samples.df['image_id']:
        o, d = objs[objs['image_id'] == im], ledger[ledger['image_id'] == im]
        gt_cls = torch.tensor(o['label'].map(cid).to_numpy(np.int64))
        gt_bboxes = box_convert(torch.tensor(o[['x', 'y', 'w', 'h']].to_numpy()), 'xywh', 'xyxy')
        boxes = box_convert(torch.tensor(d[['x', 'y', 'w', 'h']].to_numpy()), 'xywh', 'xyxy')
        labels = torch.tensor(d['label'].map(cid).to_numpy(float)[:, None])
        detections = torch.cat([boxes, torch.tensor(d[['score']].to_numpy()), labels], 1)  # x1 y1 x2 y2 conf cls
        if gt_cls.shape[0] == 0:
            for dc in detections[detections[:, 4] > conf][:, 5].int():
                matrix[dc, nc] += 1
            continue
        detections = detections[detections[:, 4] > conf]
        detection_classes = detections[:, 5].int()
        iou = box_iou(gt_bboxes, detections[:, :4])
        x = torch.where(iou > iou_thres)
        if x[0].shape[0]:
            matches = torch.cat((torch.stack(x, 1), iou[x[0], x[1]][:, None]), 1).numpy()
            if x[0].shape[0] > 1:
                matches = matches[matches[:, 2].argsort()[::-1]]
                matches = matches[np.unique(matches[:, 1], return_index=True)[1]]
                matches = matches[matches[:, 2].argsort()[::-1]]
                matches = matches[np.unique(matches[:, 0], return_index=True)[1]]
        else:
            matches = np.zeros((0, 3))
        n = matches.shape[0] > 0
        m0, m1, _ = matches.transpose().astype(int)
        for i, gc in enumerate(gt_cls):
            j = m0 == i
            if n and sum(j) == 1:
                matrix[detection_classes[m1[j]], gc] += 1
            else:
                matrix[nc, gc] += 1
        if n:
            for i, dc in enumerate(detection_classes):
                if not any(m1 == i):
                    matrix[dc, nc] += 1
    return matrix


@pytest.mark.parametrize('seed', range(3))
def test_ultralytics_method_equals_its_confusion_matrix(seed):
    s, led = scene(seed=seed, ties=False)
    cm = detection_confusion(s, led, iou=0.45, score_threshold=0.25, method='ultralytics')
    np.testing.assert_array_equal(cm.to_numpy().T, ultralytics_matrix(s, led))


def test_errors_table_agrees_with_breakdown():
    s, led = scene(seed=4)
    e, eb = detection_errors(s, led), error_breakdown(s, led)
    assert list(e.columns) == list(ERROR_COLUMNS)
    fp = e[e['kind'] == 'FP']['type'].value_counts()
    assert {t: int(fp.get(t, 0)) for t in ERROR_TYPES[:-1]} == {t: eb.counts[t] for t in ERROR_TYPES[:-1]}
    assert (e['type'] == 'miss').sum() == eb.counts['miss']
    fn = e[e['kind'] == 'FN']
    assert set(fn['type']) <= {'miss', 'cls', 'loc'}
    assert e[e['kind'] == 'FP']['score'].is_monotonic_decreasing
    # every box of an FP row is a ledger detection, every FN row an object
    assert set(map(tuple, e[e['kind'] == 'FP'][['x', 'y', 'w', 'h']].to_numpy())) <= set(
        map(tuple, led[['x', 'y', 'w', 'h']].to_numpy()))
    assert set(fn['object_id']) <= set(s.objects['object_id'])


def small(labels=('cat',), crowd=0):
    "One 100-pixel image with one object of the first class."
    df = pd.DataFrame(dict(image_id=['a'], path=['a.png'], split='valid', width=100, height=100))
    o = pd.DataFrame([dict(image_id='a', object_id=1, label=labels[0], x=10.0, y=10.0, w=30.0, h=30.0,
                           iscrowd=crowd, area=900.0, segmentation=None)])
    return Samples(df, '.', 'detection', list(labels), objects=o)


def det(label='cat', score=0.9, x=10.0, image_id='a'):
    return dict(image_id=image_id, label=label, score=score, x=x, y=10.0, w=30.0, h=30.0)


def test_perfect_detector():
    s, led = scene(seed=5)
    perfect = s.objects[s.objects['iscrowd'] == 0][['image_id', 'label', 'x', 'y', 'w', 'h']].assign(score=0.9)
    eb = check_against_tidecv(s, perfect)
    assert eb.ap == 1.0 and sum(eb.dap.values()) == 0 and sum(eb.counts.values()) == 0
    assert len(detection_errors(s, perfect)) == 0
    cm = detection_confusion(s, perfect)
    assert cm.to_numpy().sum() == np.trace(cm.to_numpy()) == len(perfect)


def test_no_detections():
    s, led = scene(seed=5)
    eb = error_breakdown(s, led[:0])
    assert eb.ap == 0 and eb.counts['miss'] == (s.objects['iscrowd'] == 0).sum()
    assert math.isnan(eb.dap['miss']) and math.isnan(eb.special['false_neg'])  # nothing left to score
    assert all(eb.dap[t] == 0 for t in ERROR_TYPES[:-1])
    with pytest.raises(ZeroDivisionError):  # tidecv has no answer there
        tide, _ = run_tide(s, led[:0])
        tide.get_main_errors()
    e = detection_errors(s, led[:0])
    assert set(e['kind']) == {'FN'} and set(e['type']) == {'miss'}
    cm = detection_confusion(s, led[:0])
    assert cm['background'].sum() == len(e) and cm.drop(columns='background').to_numpy().sum() == 0


def test_one_image_one_class():
    s = small()
    led = pd.DataFrame([det(), det(score=0.8, x=12.0), det(score=0.7, x=60.0)])
    eb = check_against_tidecv(s, led)
    assert eb.counts == dict(cls=0, loc=0, both=0, dupe=1, bkg=1, miss=0)
    assert detection_confusion(s, led).to_numpy().tolist() == [[1, 0], [2, 0]]


def test_iou_exactly_at_the_threshold():
    s = small()
    led = pd.DataFrame([dict(det(), h=15.0)])  # IoU 450 / 900 = 0.5 exactly
    eb = check_against_tidecv(s, led)
    assert eb.ap == 1.0 and sum(eb.counts.values()) == 0  # TIDE and COCO: IoU >= threshold matches
    assert detection_confusion(s, led).loc['cat', 'cat'] == 1
    assert detection_confusion(s, led, method='ultralytics').loc['cat', 'cat'] == 0  # Ultralytics: IoU > threshold
    assert detection_errors(s, led, pos_iou=0.6)['type'].tolist() == ['loc', 'loc']  # the FP and the object it misses


def test_class_absent_from_detections():
    s, led = scene(seed=6)
    led = led[led['label'] != 'dog']
    eb = check_against_tidecv(s, led)
    assert eb.per_class.loc['dog', 'n_det'] == 0 and eb.per_class.loc['dog', 'ap'] == 0
    assert detection_confusion(s, led)['dog'].sum() == 0


def test_crowd_only_images():
    s = small(('cat', 'dog'), crowd=1)
    led = pd.DataFrame([det(), det('dog', 0.5, x=60.0)])
    eb = error_breakdown(s, led)  # the crowd detection is ignored; the dog one has no object: AP 0 for dog
    assert eb.ap == 0 and eb.per_class['n_gt'].sum() == 0
    e = detection_errors(s, led)
    assert e['ignored'].tolist() == [True, False] and (e['kind'] == 'FP').all()
    cm = detection_confusion(s, led)
    assert cm.loc['background', 'dog'] == 1 and cm.to_numpy().sum() == 1
    only = error_breakdown(s, led[:1])
    assert math.isnan(only.ap)  # nothing scored at all: undefined, not an exception


def test_bad_inputs_are_named():
    s = small()
    with pytest.raises(LedgerError, match=r"image id\(s\) \['zz'\]"):
        error_breakdown(s, pd.DataFrame([det(image_id='zz')]))
    with pytest.raises(LedgerError, match='NaN or infinite'):
        detection_confusion(s, pd.DataFrame([det(score=float('nan'))]))
    with pytest.raises(LedgerError, match="'horse'"):
        detection_errors(s, pd.DataFrame([det('horse')]))
    cls = Samples(pd.DataFrame(dict(image_id=['a'], path=['a.png'], split='valid', label=['cat'])), '.')
    with pytest.raises(DataError, match='needs detection samples'):
        error_breakdown(cls, pd.DataFrame([det()]))


def png_size(path) -> tuple:
    with open(path, 'rb') as f:
        assert f.read(8) == b'\x89PNG\r\n\x1a\n'
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        return im.size


def test_detection_figures_write_valid_pngs(tmp_path):
    from cvbench.data.datasets import simulate_detections, synthetic_scenes
    from cvbench.report.plots import (plot_detection_confusion, plot_detection_gallery, plot_error_breakdown,
                                      plot_f1_confidence, plot_pr_curves)

    s = synthetic_scenes(tmp_path / 'scenes', n=8, seed=2)
    led = simulate_detections(s, seed=2)
    errors = detection_errors(s, led, score_threshold=0.2)
    assert (errors['kind'] == 'FP').any() and (errors['kind'] == 'FN').any()
    w, h = png_size(plot_detection_gallery(s, errors, tmp_path / 'gallery.png', n=4, ncols=4))
    assert 500 < w < 1200 and 300 < h < 1000, (w, h)
    w, h = png_size(plot_detection_confusion(detection_confusion(s, led, score_threshold=0.2), tmp_path / 'cm.png'))
    assert 200 < w < 1000 and 200 < h < 1000, (w, h)
    grid = np.linspace(0, 1, 101)
    curves = {c: np.clip(1 - grid ** (i + 1), 0, 1) for i, c in enumerate(s.classes)}
    for f in (plot_pr_curves(grid, curves, path=tmp_path / 'pr.png'),
              plot_f1_confidence(grid, curves, path=tmp_path / 'f1.png')):
        w, h = png_size(f)
        assert 300 < w < 900 and 250 < h < 700, (w, h)
    from cvbench.evaluate.detection import evaluate_detection  # the curves straight from a `DetectionEvaluation`

    ev = evaluate_detection(s, led, n_resamples=10)
    n_drawn = ev.pr_curves['class'].nunique()
    assert n_drawn > 1 and len(plot_pr_curves(ev).axes[0].lines) == n_drawn + 1  # a line per class and the mean
    assert len(plot_f1_confidence(ev).axes[0].lines) == ev.f1_curves['class'].nunique() + 1
    w, h = png_size(plot_error_breakdown(error_breakdown(s, led), tmp_path / 'tide.png'))
    assert 400 < w < 1000 and 150 < h < 500, (w, h)
    assert not list(tmp_path.glob('*.tmp*'))  # atomic writes leave no temporary files
    plt.close('all')
