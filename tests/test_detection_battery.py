"""A new user's bad-input battery for detection, video and OCR (issue 12, "Bad input" and "Edge cases").

Every bad input gets a clear error naming the file, the object and the fix, or pycocotools' own documented behaviour;
every degenerate input (a perfect detector, one image, one class, no detections, no annotations) is an ordinary case
whose COCO stats equal pycocotools' exactly. Metrics are always compared with pycocotools, never only with cvbench.
"""

import contextlib, copy, io, json, math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import run_cli
from PIL import Image

from cvbench.core import CvbenchError
from cvbench.data.detection import convert_dataset, read_coco, read_detection, read_voc, read_yolo, write_yolo
from cvbench.evaluate.detection import evaluate_detection
from cvbench.evaluate.ledger import read_coco_results

IMAGES = [dict(id=i + 1, file_name=f'im{i}.png', width=40, height=30) for i in range(3)]
CATEGORIES = [dict(id=1, name='cat'), dict(id=3, name='dog')]
ANNOTATIONS = [dict(id=1, image_id=1, category_id=1, bbox=[1, 2, 10, 8], iscrowd=0, area=80.0),
               dict(id=2, image_id=2, category_id=3, bbox=[5, 5, 20, 10], iscrowd=0, area=200.0),
               dict(id=3, image_id=3, category_id=1, bbox=[0, 0, 40, 30], iscrowd=0, area=1200.0)]
BASE = dict(images=IMAGES, categories=CATEGORIES, annotations=ANNOTATIONS)
PERFECT = [dict(image_id=a['image_id'], category_id=a['category_id'], bbox=a['bbox'], score=1.0) for a in ANNOTATIONS]


@pytest.fixture(scope='module')
def folder(tmp_path_factory) -> Path:
    "Three 40x30 PNGs `im0..im2.png`, one file that is not an image (`bad.png`), and a subfolder for outputs."
    f = tmp_path_factory.mktemp('battery')
    for i in range(3):
        Image.new('RGB', (40, 30), (60 * i, 90, 160)).save(f / f'im{i}.png')
    (f / 'bad.png').write_bytes(b'not an image at all')
    return f


def write_json(path: Path, obj) -> Path:
    path.write_text(json.dumps(obj))
    return path


def coco_file(folder: Path, change=None, name='instances.json') -> Path:
    "The base COCO dataset with `change(d)` applied, written into `folder`."
    d = copy.deepcopy(BASE)
    if change is not None:
        change(d)
    return write_json(folder / name, d)


def ann(i, **kw):
    return lambda d: d['annotations'][i].update(kw)


def drop(*keys):
    return lambda d: [a.pop(k, None) for a in d['annotations'] for k in keys]


def pycocotools_stats(gt: dict, res: list) -> np.ndarray:
    "The 12 stats of pycocotools on a dataset dict and a results list (an empty list: no detections)."
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        g = COCO()
        g.dataset = copy.deepcopy(gt)
        g.createIndex()
        if res:
            d = g.loadRes(copy.deepcopy(res))
        else:  # pycocotools' loadRes fails on [] (it reads anns[0]): an empty result set by hand
            d = COCO()
            d.dataset = dict(images=gt['images'], categories=gt['categories'], annotations=[])
            d.createIndex()
        e = COCOeval(g, d, 'bbox')
        e.evaluate()
        e.accumulate()
        e.summarize()
    return np.asarray(e.stats)


# --- COCO dataset files --------------------------------------------------------------------------------------------

COCO_ERRORS = [
    ('annotation id 0', ann(0, id=0), 'annotations[0] has id 0; pycocotools treats id 0 as "unmatched"'),
    ('annotation id 1.5', ann(0, id=1.5), 'annotations[0] has id 1.5; annotation ids are whole numbers'),
    ('annotation id text', ann(0, id='a'), "annotations[0] has id 'a'"),
    ('annotation id twice', ann(1, id=1), 'annotation id 1 is used twice'),
    ('box w < 0', ann(0, bbox=[1, 2, -3, 8]), 'annotation 1 has a negative width or height'),
    ('box NaN', ann(0, bbox=[1, 2, float('nan'), 8]), 'annotation 1 has a non-finite bbox'),
    ('box inf', ann(0, bbox=[1, 2, float('inf'), 8]), 'annotation 1 has a non-finite bbox'),
    ('box x text', ann(0, bbox=['1', 2, 3, 8]), "annotation 1 has bbox ['1', 2, 3, 8]; bbox values must be numbers"),
    ('box nested', ann(0, bbox=[[1, 2], 3, 4, 5]), 'bbox values must be numbers'),
    ('box of 3', ann(0, bbox=[1, 2, 3]), 'annotation 1 has bbox [1, 2, 3]; a COCO bbox is [x, y, width, height]'),
    ('box a number', ann(0, bbox=5), 'annotation 1 has bbox 5'),
    ('box null', ann(0, bbox=None), 'annotations[0] has no `bbox`'),
    ('unknown category id', ann(0, category_id=7), 'annotation 1 refers to category id 7, which is not in the '
                                                   '`categories` list'),
    ('category id as text', ann(0, category_id='1'), "category id '1' (text: COCO ids are numbers"),
    ('image id as text', ann(0, image_id='1'), "image id '1' (text: COCO ids are numbers"),
    ('unknown image id', ann(0, image_id=99), 'annotation 1 refers to image id 99'),
    ('iscrowd text', ann(0, iscrowd='yes'), "annotation 1 has iscrowd 'yes'; iscrowd must be a number"),
    ('area text', ann(0, area='big'), "annotation 1 has area 'big'; area must be a number"),
    ('area negative', ann(0, area=-5), 'annotation 1 has area -5.0; pycocotools leaves such an object out'),
    ('polygon of 2 points', ann(0, segmentation=[[1, 2, 3, 4]]), 'annotation 1: a polygon needs 3 points'),
    ('RLE without size', ann(0, segmentation={'counts': 'abc'}), 'an RLE segmentation needs `counts` and `size`'),
    ('categories empty', lambda d: d.update(categories=[]), 'has no `categories`'),
    ('categories missing', lambda d: d.pop('categories'), 'has no `categories`'),
    ('category name twice', lambda d: d['categories'].append(dict(id=9, name='cat')), "category name 'cat' is used "
                                                                                     'twice'),
    ('images empty', lambda d: d.update(images=[], annotations=[]), 'lists no `images`'),
    ('images a dict', lambda d: d.update(images={'id': 1}), 'lists no `images`'),
    ('annotations a dict', lambda d: d.update(annotations={'id': 1}), '`annotations` is a dict; it must be a list'),
    ('duplicate image id', lambda d: d['images'].append(dict(IMAGES[1], id=1)), 'image id 1 is listed twice'),
    ('duplicate file_name', lambda d: d['images'].append(dict(IMAGES[1], id=9)), "image file_name 'im1.png' is listed"),
    ('image id text', lambda d: d['images'][0].update(id='x'), "image ids must be whole numbers"),
    ('image width 0', lambda d: d['images'][0].update(width=0), 'image 1 has width/height [0, 30]'),
    ('image without file_name', lambda d: d['images'][0].pop('file_name'), 'images[0] has no `file_name`'),
]


@pytest.mark.parametrize('name,change,message', COCO_ERRORS, ids=[c[0] for c in COCO_ERRORS])
def test_a_broken_coco_file_names_the_file_the_object_and_the_fix(folder, name, change, message):
    path = coco_file(folder, change, 'broken.json')
    with pytest.raises(CvbenchError) as e:
        read_coco(path)
    assert str(path) in str(e.value) and message in str(e.value)


def test_not_a_coco_dataset(folder):
    for text, message in (('', 'is not valid JSON (line 1, column 1'), ('null', 'is not a COCO dataset'),
                          ('[]', 'a COCO *results* file'), ('{"a": 1}', 'is not a COCO dataset')):
        (folder / 'odd.json').write_text(text)
        with pytest.raises(CvbenchError) as e:
            read_coco(folder / 'odd.json')
        assert message in str(e.value)


def objects_of(folder, change):
    s = read_coco(coco_file(folder, change, 'ok.json'))
    return s, s.objects[['object_id', 'label', 'x', 'y', 'w', 'h', 'iscrowd', 'area']].values.tolist()


def test_missing_iscrowd_and_area_are_filled_as_loadres_does(folder):
    "No `iscrowd`: 0; no `area` (or null): w * h, what pycocotools' loadRes sets for results; documented."
    _, o = objects_of(folder, drop('iscrowd', 'area'))
    assert [r[6] for r in o] == [0, 0, 0] and [r[7] for r in o] == [80.0, 200.0, 1200.0]
    _, o = objects_of(folder, ann(0, iscrowd=None, area=None))
    assert o[0][6:] == [0, 80.0]
    _, o = objects_of(folder, ann(0, iscrowd=2))  # truthy, as pycocotools reads it
    assert o[0][6] == 1


def test_zero_size_box_is_kept_and_scored_like_pycocotools(folder):
    "A box with w=0 is representable (pycocotools gives it IoU 0 with everything): kept, AP equal to pycocotools'."
    s, o = objects_of(folder, ann(0, bbox=[1, 2, 0, 8], area=0.0))
    assert o[0][4] == 0.0
    gt = json.loads((folder / 'ok.json').read_text())
    check_equal_stats(s, gt, PERFECT)


def test_image_paths_that_leave_the_dataset_folder_are_refused_by_the_writers(folder):
    "`../im0.png` or an absolute path would put images outside the output folder (or crash with SameFileError)."
    sub = folder / 'sub'
    sub.mkdir(exist_ok=True)
    Image.new('RGB', (40, 30)).save(sub / 'x.png')
    for k, p in enumerate(['../im0.png', str(folder / 'im0.png')]):
        d = copy.deepcopy(BASE)
        d['images'][0]['file_name'] = p
        src = write_json(sub / f'up{k}.json', d)
        s = read_coco(src, root=sub, check_images=False)
        assert s.df.path[0] == p  # reading keeps the path as given
        for to in ('coco', 'voc', 'yolo'):
            with pytest.raises(CvbenchError, match='is absolute or leaves the dataset folder'):
                convert_dataset(src, to, folder / f'conv{k}{to}', root=sub)
            assert not (folder / f'conv{k}{to}' / 'images').exists()


def test_zero_size_box_and_unicode_name_survive_coco_voc_yolo_coco(folder, tmp_path):
    "A w=0 box (VOC writes xmax = xmin - 1) and a file name with a space and an umlaut come back unchanged."
    Image.new('RGB', (40, 30)).save(folder / 'ü n.png')
    src = coco_file(folder, lambda d: (d['images'][0].update(file_name='ü n.png'),
                                       d['annotations'][0].update(bbox=[1, 2, 0, 8], area=0.0)), 'rt.json')
    for k, to in enumerate(['voc', 'yolo', 'coco']):
        src = convert_dataset(src, to, tmp_path / to, root=folder if k == 0 else None)
    s = read_detection(src)
    boxes = s.objects.set_index(s.objects.image_id.str.rsplit('/', n=1).str[-1])[['x', 'y', 'w', 'h']]
    assert boxes.round(6).loc['ü n.png'].tolist() == [1.0, 2.0, 0.0, 8.0]
    assert boxes.round(6).loc['im1.png'].tolist() == [5.0, 5.0, 20.0, 10.0]


def test_missing_images_are_skipped_with_a_reason_and_their_objects(folder):
    s = read_coco(coco_file(folder, lambda d: d['images'][0].update(file_name='gone.png'), 'gone.json'))
    assert s.df.path.tolist() == ['im1.png', 'im2.png']
    assert s.skipped.reason.tolist() == ['file not found'] and 1 not in s.objects.object_id.tolist()


# --- pycocotools parity on degenerate cases ---------------------------------------------------------------------------

def check_equal_stats(samples, gt: dict, res: list, n_resamples=0):
    "cvbench's 12 stats equal pycocotools' (bit for bit) on the same dataset and results."
    from cvbench.evaluate.ledger import results_ledger

    ledger = results_ledger(res, samples)
    ev = evaluate_detection(samples, ledger, n_resamples=n_resamples)
    ours, ref = np.asarray(ev.to_dict()['coco_stats'], float), pycocotools_stats(gt, res)
    np.testing.assert_array_equal(ours, ref)
    return ours, ev


rng = np.random.default_rng(0)
MANY = [dict(image_id=1, category_id=1, bbox=rng.uniform(0, 20, 4).round(2).tolist(), score=float(rng.uniform()))
        for _ in range(10_000)] + [dict(PERFECT[0], score=0.5)]
PARITY = [
    ('perfect detector', None, PERFECT),
    ('no detections', None, []),
    ('detections for a class without ground truth', lambda d: d['annotations'].pop(1), PERFECT),
    ('a class with ground truth and no detections', None, PERFECT[:1]),
    ('one image one class', lambda d: d.update(images=IMAGES[:1], annotations=ANNOTATIONS[:1],
                                               categories=CATEGORIES[:1]), PERFECT[:1]),
    ('no annotations at all', lambda d: d.update(annotations=[]), PERFECT),
    ('10,000 detections on one image', None, MANY),
    ('score ties', None, [dict(r, score=.5) for r in PERFECT] + [dict(image_id=1, category_id=1, bbox=[20, 20, 5, 5],
                                                                      score=.5)]),
    ('scores above 1 and negative', None, [dict(r, score=s) for r, s in zip(PERFECT, [5.0, -1.0, 0.3])]
     + [dict(image_id=1, category_id=1, bbox=[20, 20, 5, 5], score=2.0)]),
    ('a crowd region', ann(2, iscrowd=1), PERFECT + [dict(image_id=3, category_id=1, bbox=[1, 1, 5, 5], score=.4)]),
    ('areas exactly 32^2 and 96^2', lambda d: d['annotations'].__setitem__(
        slice(0, 2), [dict(ANNOTATIONS[0], bbox=[0, 0, 32, 32], area=1024.0),
                      dict(ANNOTATIONS[1], bbox=[0, 0, 96, 96], area=9216.0)]),
     [dict(image_id=1, category_id=1, bbox=[0, 0, 32, 32], score=.9),
      dict(image_id=2, category_id=3, bbox=[0, 0, 96, 96], score=.8)]),
]


@pytest.mark.parametrize('name,change,res', PARITY, ids=[c[0] for c in PARITY])
def test_degenerate_cases_equal_pycocotools(folder, name, change, res):
    path = coco_file(folder, change, 'parity.json')
    stats, _ = check_equal_stats(read_coco(path), json.loads(path.read_text()), res)
    if name == 'perfect detector':
        assert stats[0] == stats[1] == stats[2] == 1.0
    if name == 'no annotations at all':
        assert (stats == -1).all()  # pycocotools' "no ground truth": -1, not 0 and not a crash


def test_a_class_absent_from_one_split_equals_pycocotools(folder):
    "The `valid` split of a dataset has no `dog` at all (no ground truth, no detection): AP over the classes present."
    from cvbench.data.splits import group_split

    path = coco_file(folder, None, 'split.json')
    s = group_split(read_coco(path), ['a', 'b', 'c'], valid_pct=0.34, seed=0)
    valid = s.subset('valid')
    assert len(valid) == 1 and len(valid.objects) == 1 and valid.classes == ['cat', 'dog']
    gt = json.loads(path.read_text())
    keep = set(valid.coco_ids().tolist())
    gt['images'] = [i for i in gt['images'] if i['id'] in keep]
    gt['annotations'] = [a for a in gt['annotations'] if a['image_id'] in keep]
    res = [r for r in PERFECT if r['image_id'] in keep] + [dict(image_id=min(keep), category_id=1, bbox=[9, 9, 9, 9],
                                                                  score=0.99)]
    check_equal_stats(valid, gt, res)


def test_perfect_one_image_one_class_full_evaluation(folder):
    """Intervals, slices, thresholds, curves: no crash, and every AP equals pycocotools' AP.

    With one object pycocotools' AP is 1 - 2**-52 (0.9999999999999998), not 1.0: its precision is
    tp / (tp + fp + np.spacing(1)). cvbench reports the same number, bit for bit (documented, not rounded)."""
    path = coco_file(folder, lambda d: d.update(images=IMAGES[:1], annotations=ANNOTATIONS[:1],
                                                categories=CATEGORIES[:1]), 'one.json')
    stats, ev = check_equal_stats(read_coco(path), json.loads(path.read_text()), PERFECT[:1], n_resamples=50)
    assert stats[0] == 1 / (1 + np.spacing(1)) == 0.9999999999999998
    assert ev.per_class['AP'].tolist() == [stats[0]]
    iv = ev.intervals[ev.intervals.metric == 'AP']
    np.testing.assert_allclose(iv[['estimate', 'low', 'high']].to_numpy(), stats[0], rtol=0, atol=1e-15)
    json.dumps(ev.to_dict(), allow_nan=False)  # JSON-safe even with degenerate intervals


def test_an_interval_of_one_image_is_its_estimate_bit_for_bit(folder):
    path = coco_file(folder, lambda d: d.update(images=IMAGES[:1], annotations=ANNOTATIONS[:1],
                                                categories=CATEGORIES[:1]), 'one.json')
    stats, ev = check_equal_stats(read_coco(path), json.loads(path.read_text()), PERFECT[:1], n_resamples=20)
    iv = ev.intervals
    assert (iv.low == iv.estimate).all() and (iv.high == iv.estimate).all()


def test_error_analysis_of_a_perfect_and_of_an_empty_detector(folder):
    "Perfect: every dAP 0 and AP 1, as tidecv says; no detections or no ground truth (tidecv divides by 0): no crash."
    from cvbench.evaluate.detection_errors import detection_confusion, detection_errors, error_breakdown
    from cvbench.evaluate.ledger import results_ledger
    from tidecv import TIDE, Data

    s = read_coco(coco_file(folder))
    perfect, empty = results_ledger(PERFECT, s), results_ledger([], s)
    gt, pred = Data('gt'), Data('pred')
    img = {k: i for i, k in enumerate(s.df.image_id)}
    for o in s.objects.itertuples():
        gt.add_ground_truth(img[o.image_id], s.classes.index(o.label), [o.x, o.y, o.w, o.h])
    for d in perfect.itertuples():
        pred.add_detection(img[d.image_id], s.classes.index(d.label), d.score, [d.x, d.y, d.w, d.h])
    tide = TIDE()
    run = tide.evaluate(gt, pred, mode=TIDE.BOX, name='run')
    eb = error_breakdown(s, perfect)
    assert 100 * eb.ap == run.ap == 100.0
    assert set(eb.dap.values()) == {0.0} == set(tide.get_main_errors()['run'].values())
    assert detection_errors(s, perfect).empty
    assert np.diag(detection_confusion(s, perfect).to_numpy()).tolist() == [2, 1, 0]
    assert error_breakdown(s, empty).ap == 0.0
    assert detection_errors(s, empty).type.tolist() == ['miss'] * 3
    nothing = read_coco(coco_file(folder, lambda d: d.update(annotations=[]), 'nothing.json'))
    assert detection_errors(nothing, results_ledger(PERFECT, nothing)).type.tolist() == ['bkg'] * 3


EVAL_ARGS = [
    ('segm without masks', dict(iou_type='segm'), 'segmentation'),
    ('unknown iou_type', dict(iou_type='keypoints'), 'iou_type'),
    ('negative resamples', dict(n_resamples=-1), 'n_resamples'),
    ('target recall above 1', dict(target_recall=1.5), 'target_recall'),
]


@pytest.mark.parametrize('name,kw,word', EVAL_ARGS, ids=[c[0] for c in EVAL_ARGS])
def test_evaluation_arguments_that_cannot_work_are_refused(folder, name, kw, word):
    from cvbench.evaluate.ledger import results_ledger

    s = read_coco(coco_file(folder))
    with pytest.raises(CvbenchError, match=word):
        evaluate_detection(s, results_ledger(PERFECT, s), **dict(dict(n_resamples=5), **kw))


# --- COCO results files -----------------------------------------------------------------------------------------------

def one(**kw):
    return [dict(dict(image_id=1, category_id=1, bbox=[1, 2, 10, 8], score=.9), **kw)]


RESULT_ERRORS = [
    ('a dict, not a list', {'annotations': []}, 'holds a dict, not a list of detections'),
    ('image id not in the dataset', one(image_id=99), 'results for 1 image id(s) not in the dataset, e.g. [99]'),
    ('image id as text', one(image_id='1'), """has "image_id": '1'; it must be a whole number (Ultralytics"""),
    ('NaN score', one(score=float('nan')), 'a NaN or infinite score or box, first at row 0'),
    ('null score', one(score=None), 'has "score": None; it must be a number'),
    ('bbox of 3 numbers', one(bbox=[1, 2, 3]), 'every "bbox" must be [x, y, w, h]'),
    ('negative width', one(bbox=[1, 2, -3, 4]), 'a negative width or height'),
    ('unknown category id', one(category_id=2), 'results for 1 category id(s) not in the dataset, e.g. [2]'),
    ('no score', [dict(image_id=1, category_id=1, bbox=[1, 2, 3, 4])], "result 0 has no 'score'"),
    ('not a dict', [1], "result 0 has no 'image_id'"),
]


@pytest.mark.parametrize('name,res,message', RESULT_ERRORS, ids=[c[0] for c in RESULT_ERRORS])
def test_a_broken_results_file_names_the_file_the_detection_and_the_fix(folder, name, res, message):
    s = read_coco(coco_file(folder))
    path = write_json(folder / 'results.json', res)
    with pytest.raises(CvbenchError) as e:
        read_coco_results(path, s)
    assert str(path) in str(e.value) and message in str(e.value)


def test_scores_outside_0_1_are_kept_as_pycocotools_does(folder):
    "pycocotools accepts any finite float as a score (it only sorts by it); so does cvbench (documented)."
    s = read_coco(coco_file(folder))
    led = read_coco_results(write_json(folder / 'results.json', one(score=5) + one(score=-1)), s)
    assert led.score.tolist() == [5.0, -1.0]
    assert read_coco_results(write_json(folder / 'results.json', []), s).empty


SILENT_RESULTS = [
    ('bbox value as text', one(bbox=['1', 2, 3, 4]), 'bbox'),
    ('bbox nested', one(bbox=[[1, 2], [3, 4]]), 'bbox'),
    ('image id true', one(image_id=True), 'image'),
    ('score as text', one(score='0.5'), 'score'),
]


@pytest.mark.parametrize('name,res,word', SILENT_RESULTS, ids=[c[0] for c in SILENT_RESULTS])
def test_results_with_values_of_the_wrong_type_are_refused(folder, name, res, word):
    s = read_coco(coco_file(folder))
    with pytest.raises(CvbenchError, match=word):
        read_coco_results(write_json(folder / 'results.json', res), s)


# --- YOLO -----------------------------------------------------------------------------------------------------------

def yolo_dataset(root: Path, label: str | None, yaml_text='names: [cat, dog]\ntrain: images/train\n') -> Path:
    "Two 40x30 images under `images/train`, `label` as the label file of the first (None: no label file)."
    (root / 'images' / 'train').mkdir(parents=True)
    (root / 'labels' / 'train').mkdir(parents=True)
    for i in range(2):
        Image.new('RGB', (40, 30)).save(root / 'images' / 'train' / f'a{i}.png')
    if label is not None:
        (root / 'labels' / 'train' / 'a0.txt').write_text(label)
    return write_text_file(root / 'data.yaml', yaml_text)


def write_text_file(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


YOLO_ERRORS = [
    ('4 columns', '0 0.5 0.5 0.2\n', None, 'a0.txt line 1: `0 0.5 0.5 0.2` has 4 columns'),
    ('6 columns', '0 0.5 0.5 0.2 0.2 0.9\n', None, 'has 6 columns: it looks like a prediction'),
    ('class index out of range', '2 0.5 0.5 0.2 0.2\n', None, 'has a class index outside 0..1'),
    ('class index negative', '-1 0.5 0.5 0.2 0.2\n', None, 'has a class index outside 0..1'),
    ('value above 1', '0 1.5 0.5 0.2 0.2\n', None, 'has a coordinate outside 0..1'),
    ('pixels, not normalized', '0 20 15 8 6\n', None, 'has a coordinate outside 0..1'),
    ('NaN', '0 nan 0.5 0.2 0.2\n', None, 'has a coordinate outside 0..1'),
    ('text', '0 abc 0.5 0.2 0.2\n', None, 'has a value that is not a number'),
    ('YAML without names', '', 'train: images/train\n', 'needs `names`'),
    ('names empty', '', 'names: []\ntrain: images/train\n', '`names` must be a list of class names'),
    ('names with a gap', '', 'names: {0: a, 2: b}\ntrain: images/train\n', 'YOLO class indices are 0..n-1'),
    ('names keyed by text', '', 'names: {a: cat}\ntrain: images/train\n', "`names` indices are ['a']"),
    ('a name twice', '', 'names: [cat, cat]\ntrain: images/train\n', "class name 'cat' is in `names` twice"),
    ('YAML that does not parse', '', 'names: [a\n', 'is not valid YAML'),
    ('no split listed', '', 'names: [a]\n', 'lists no images'),
]


@pytest.mark.parametrize('name,label,yaml_text,message', YOLO_ERRORS, ids=[c[0] for c in YOLO_ERRORS])
def test_a_broken_yolo_dataset_names_the_file_and_line(tmp_path, name, label, yaml_text, message):
    kw = {} if yaml_text is None else dict(yaml_text=yaml_text)
    path = yolo_dataset(tmp_path, label, **kw)
    with pytest.raises(CvbenchError) as e:
        read_yolo(path)
    assert message in str(e.value)


def test_an_empty_yolo_label_file_is_an_image_without_objects(tmp_path):
    s = read_yolo(yolo_dataset(tmp_path, ''))
    assert len(s) == 2 and s.objects.empty
    s = read_yolo(yolo_dataset(tmp_path / 'b', '\r\n0 0.5 0.5 0.2 0.2\r\n\n'))  # blank lines and CRLF
    assert s.objects[['x', 'y', 'w', 'h']].values.round(6).tolist() == [[16.0, 12.0, 8.0, 6.0]]


# --- Pascal VOC -------------------------------------------------------------------------------------------------------

OBJ = '<object><name>cat</name><bndbox><xmin>2</xmin><ymin>3</ymin><xmax>11</xmax><ymax>12</ymax></bndbox></object>'
SIZE = '<size><width>40</width><height>30</height></size>'


def voc_dataset(root: Path, body: str) -> Path:
    (root / 'Annotations').mkdir(parents=True)
    (root / 'JPEGImages').mkdir()
    Image.new('RGB', (40, 30)).save(root / 'JPEGImages' / 'a.jpg')
    (root / 'Annotations' / 'a.xml').write_text(f'<annotation><filename>a.jpg</filename>{body}</annotation>')
    return root


VOC_ERRORS = [
    ('xmax < xmin', SIZE + OBJ.replace('<xmax>11', '<xmax>0'), 'object 1 has <bndbox> [2.0, 3.0, 0.0, 12.0]'),
    ('NaN corner', SIZE + OBJ.replace('<xmin>2', '<xmin>nan'), 'it needs finite xmin <= xmax + 1'),
    ('no name', SIZE + OBJ.replace('<name>cat</name>', ''), 'object 1 has no <name>'),
    ('no bndbox', SIZE + '<object><name>cat</name></object>', 'object 1 has no <bndbox>'),
    ('size not a number', '<size><width>x</width><height>30</height></size>' + OBJ, '<width> is \'x\''),
    ('difficult yes', SIZE + OBJ.replace('</name>', '</name><difficult>yes</difficult>'),
     "object 1: <difficult> is 'yes'; VOC flags are 0 or 1"),
]


@pytest.mark.parametrize('name,body,message', VOC_ERRORS, ids=[c[0] for c in VOC_ERRORS])
def test_a_broken_voc_file_names_the_file_and_object(tmp_path, name, body, message):
    with pytest.raises(CvbenchError) as e:
        read_voc(voc_dataset(tmp_path, body))
    assert 'a.xml' in str(e.value) and message in str(e.value)


def test_voc_without_size_objects_or_difficult_is_ordinary(tmp_path):
    "No <size>: from the image header; no <object>: an image without objects; no <difficult>: 0."
    s = read_voc(voc_dataset(tmp_path / 'a', OBJ + OBJ.replace('</name>', '</name><difficult>1</difficult>')))
    assert s.df[['width', 'height']].values.tolist() == [[40, 30]]
    assert s.objects[['x', 'y', 'w', 'h', 'difficult']].values.tolist() == [[1, 2, 10, 10, 0], [1, 2, 10, 10, 1]]
    s = read_voc(voc_dataset(tmp_path / 'b', SIZE))
    assert len(s) == 1 and s.objects.empty
    s = read_voc(voc_dataset(tmp_path / 'c', SIZE + OBJ.replace('</name>', '</name><truncated>true</truncated>')))
    assert s.objects.truncated.tolist() == [1]


# --- video and OCR ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize('content', [b'', b'hello, not a video'], ids=['empty file', 'not a video'])
def test_a_file_that_is_not_a_video_says_so(tmp_path, content):
    from cvbench.data.video import extract_frames

    (tmp_path / 'v.mp4').write_bytes(content)
    with pytest.raises(CvbenchError, match='OpenCV cannot open .*v.mp4 as a video'):
        extract_frames(tmp_path / 'v.mp4', tmp_path / 'frames', every=1)
    assert not (tmp_path / 'frames' / 'samples.parquet').exists()


def test_a_video_without_frames_says_so(tmp_path):
    "A valid container that holds no frame (a writer that never wrote) is an error, not an empty dataset."
    import cv2
    from cvbench.data.video import extract_frames

    cv2.VideoWriter(str(tmp_path / 'zero.avi'), cv2.VideoWriter_fourcc(*'MJPG'), 5, (32, 24)).release()
    with pytest.raises(CvbenchError, match='no frame of .*zero.avi could be decoded'):
        extract_frames(tmp_path / 'zero.avi', tmp_path / 'frames', every=1)


def text_ledger(refs, preds):
    return pd.DataFrame(dict(image_id=[f'i{k}' for k in range(len(refs))], text=refs, pred_text=preds))


def test_ocr_edge_cases_agree_with_jiwer():
    "Empty reference, unicode (NFC), perfect, one row: CER/WER equal jiwer's corpus rates."
    import jiwer
    from cvbench.evaluate.ocr import evaluate_text

    cases = [(['', 'abc'], ['x', 'abc']), (['héllo wörld', '日本語'], ['hello wörld', '日本']), (['a b'], ['a b']),
             (['', ''], ['x', ''])]
    for refs, preds in cases:
        h = evaluate_text(text_ledger(refs, preds), n_resamples=10).headline()
        assert math.isclose(h['cer'], jiwer.cer(refs, preds)) and math.isclose(h['wer'], jiwer.wer(refs, preds))
    h = evaluate_text(text_ledger(['e\u0301'], ['\u00e9']), n_resamples=10).headline()  # one é, two code points
    assert h['cer'] == 0.0


@pytest.mark.parametrize('refs,preds,message', [
    ([float('nan'), 'abc'], ['x', 'abc'], 'ledger column `text` is not text for 1 image(s)'),
    (['ab', 'abc'], [None, 'abc'], 'ledger column `pred_text` is not text'),
    ([], [], 'the text ledger has no rows'),
], ids=['NaN text', 'missing prediction', 'empty ledger'])
def test_ocr_missing_text_is_an_error_not_a_zero(refs, preds, message):
    from cvbench.evaluate.ocr import evaluate_text

    with pytest.raises(CvbenchError, match=message.replace('(', r'\(').replace(')', r'\)')):
        evaluate_text(text_ledger(refs, preds), n_resamples=10)


def test_an_ocr_csv_with_an_empty_text_reads_it_as_empty(tmp_path):
    from cvbench.data.formats import read_dataset

    for i in range(3):
        Image.new('RGB', (20, 10)).save(tmp_path / f'{i}.png')
    (tmp_path / 't.csv').write_text('path,text\n0.png,hello\n1.png,\n2.png,héllo 日本\n', encoding='utf-8')
    s = read_dataset(tmp_path / 't.csv', tmp_path)
    assert s.task == 'text' and s.df.text.tolist() == ['hello', '', 'héllo 日本']


# --- the command line -------------------------------------------------------------------------------------------------

cli = run_cli  # in this process: a subprocess costs seconds per call


def test_cli_eval_of_a_perfect_detector_writes_metrics_equal_to_pycocotools_and_a_report(folder, tmp_path):
    gt = coco_file(folder, None, 'cli.json')
    res = write_json(tmp_path / 'perfect.json', PERFECT)
    rc, _, err = cli('eval', gt, '--predictions', res, '--out', tmp_path / 'out')
    assert rc == 0, err[-2000:]
    stats = json.loads((tmp_path / 'out' / 'metrics.json').read_text())['coco_stats']
    np.testing.assert_array_equal(stats, pycocotools_stats(json.loads(gt.read_text()), PERFECT))
    assert stats[:3] == [1.0, 1.0, 1.0]
    assert (tmp_path / 'out' / 'report' / 'report.html').stat().st_size > 0


def test_cli_bad_inputs_exit_2_with_one_line(folder, tmp_path):
    gt = coco_file(folder, None, 'cli.json')
    (folder / 'sub').mkdir(exist_ok=True)  # `../im0.png` from there is an image on disk
    cases = [
        (['eval', gt, '--predictions', write_json(tmp_path / 'd.json', {'a': 1}), '--out', tmp_path / 'o1'],
         'holds a dict, not a list of detections'),
        (['eval', coco_file(folder, ann(0, id=0), 'cli0.json'), '--predictions', write_json(tmp_path / 'p.json',
                                                                                          PERFECT),
          '--out', tmp_path / 'o2'], 'annotations[0] has id 0'),
        (['data', 'convert', coco_file(folder, lambda d: d['images'][0].update(file_name='../im0.png'), 'up.json'),
          '--root', folder / 'sub', '--to', 'yolo', '--out', tmp_path / 'o3'], 'leaves the dataset folder'),
        (['data', 'frames', write_text_file(tmp_path / 'v.mp4', 'not a video'), '--every', '2', '--out',
          tmp_path / 'o4'], 'as a video'),
    ]
    for args, message in cases:
        rc, _, stderr = cli(*args)
        err = [line for line in stderr.splitlines() if line.startswith('cvbench: error:')]
        assert rc == 2 and len(err) == 1 and message in err[0], (args, stderr[-1500:])
        assert 'Traceback' not in stderr


def test_cli_data_check_reports_an_unreadable_image_and_scans_the_rest(folder, tmp_path):
    "One bad image never stops a batch: the check scans every image and lists the unreadable one."
    gt = coco_file(folder, lambda d: d['images'][0].update(file_name='bad.png'), 'check.json')
    rc, out, err = cli('data', 'check', gt, '--out', tmp_path / 'check')
    assert rc == 0, err[-2000:]
    assert '3 images scanned' in out and 'unreadable' in out


def test_write_yolo_refuses_an_absolute_path(folder, tmp_path):
    d = copy.deepcopy(BASE)
    d['images'][0]['file_name'] = str(folder / 'im0.png')
    s = read_coco(write_json(tmp_path / 'abs.json', d), root=folder)
    with pytest.raises(CvbenchError, match='is absolute or leaves'):
        write_yolo(s, tmp_path / 'y')


def test_cli_eval_of_an_ocr_csv_with_empty_and_na_texts(tmp_path):
    "An empty cell is an empty text, and `NA` / `None` are texts a model may read, not missing values; CER as jiwer."
    import jiwer

    for i in range(3):
        Image.new('RGB', (20, 10)).save(tmp_path / f'{i}.png')
    (tmp_path / 't.csv').write_text('path,text\n0.png,hello\n1.png,\n2.png,héllo 日本\n', encoding='utf-8')
    (tmp_path / 'p.csv').write_text('image_id,pred_text\n0.png,helo\n1.png,NA\n2.png,\n', encoding='utf-8')
    rc, _, err = cli('eval', tmp_path / 't.csv', '--predictions', tmp_path / 'p.csv', '--out', tmp_path / 'out')
    assert rc == 0, err[-2000:]
    m = json.loads((tmp_path / 'out' / 'metrics.json').read_text())
    refs, preds = ['hello', '', 'héllo 日本'], ['helo', 'NA', '']
    assert math.isclose(m['cer'], jiwer.cer(refs, preds)) and math.isclose(m['wer'], jiwer.wer(refs, preds))
