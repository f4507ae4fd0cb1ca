"Annotation checks of detection samples: each check on a hand-made table, duplicates against brute force, data check."

import json, logging, zlib
import numpy as np, pandas as pd, pytest
from PIL import Image
from cvbench.data.samples import Samples
from cvbench.data.quality import (ISSUE_COLUMNS, QualityThresholds, check_annotations, duplicate_boxes, find_issues,
                                  scan_files)
from cvbench.runs import fails
from conftest import cli_here as cli, make_imagefolder

W, H = 64, 48


def detection(root, boxes: dict, empty=(), sizes=None, seg=None) -> Samples:
    "A detection `Samples` with noise images written at `root`; `boxes` maps image id -> [(label, x, y, w, h)]."
    sizes = sizes or {}
    ids = list(boxes) + list(empty)
    for i in ids:
        w, h = sizes.get(i, (W, H))
        px = np.random.default_rng(zlib.crc32(i.encode())).integers(0, 256, (h, w, 3), np.uint8)
        Image.fromarray(px).save(root / f'{i}.png')
    df = pd.DataFrame(dict(image_id=ids, path=[f'{i}.png' for i in ids], split='train',
                           width=[sizes.get(i, (W, H))[0] for i in ids], height=[sizes.get(i, (W, H))[1] for i in ids]))
    rows = [(i, lab, *b) for i in boxes for lab, *b in boxes[i]]
    o = pd.DataFrame(rows, columns=['image_id', 'label', 'x', 'y', 'w', 'h'])
    o.insert(1, 'object_id', np.arange(1, len(o) + 1) * 10)  # ids that are not row numbers
    o['iscrowd'], o['area'], o['segmentation'] = 0, o.w * o.h, seg
    return Samples(df, root, 'detection', objects=o)


CLEAN = {'a': [('car', 5, 5, 20, 10), ('car', 30, 20, 20, 20), ('person', 2, 2, 8, 16)],
         'b': [('car', 10, 10, 12, 12), ('person', 40, 10, 6, 20), ('person', 20, 20, 9, 9)]}


def with_object(extra):
    "The clean boxes plus one object `extra` = (label, x, y, w, h) in image `a` (object id 40)."
    return {'a': CLEAN['a'] + [extra], 'b': CLEAN['b']}


CASES = [  # issue, the added object (id 40), expected score
    ('nonfinite_box', ('car', 1, 1, float('nan'), 4), 1.0),
    ('nonfinite_box', ('car', float('inf'), 1, 4, 4), 1.0),
    ('degenerate_box', ('car', 1, 1, 0, 4), 1.0),
    ('degenerate_box', ('car', 1, 1, 5, -2), 1.0),
    ('box_outside', ('car', 70, 10, 5, 5), 1.0),
    ('box_outside', ('car', -20, 10, 10, 5), 1.0),
    ('box_partly_outside', ('car', 54, 10, 20, 10), 0.5),  # x 54..74 in a 64-wide image: half outside
    ('box_partly_outside', ('car', 10, -6, 10, 12), 0.5),
    ('tiny_box', ('car', 3, 30, 1, 2), 0.5),  # area 2 px^2 < 4
    ('odd_box_aspect', ('car', 1, 40, 60, 4), np.log(15)),
    ('odd_box_aspect', ('car', 50, 1, 2, 40), np.log(20)),
]


@pytest.mark.parametrize('issue,extra,score', CASES)
def test_each_box_check_fires_on_its_defect_only(tmp_path, issue, extra, score):
    found = check_annotations(detection(tmp_path, with_object(extra)))
    assert found[['issue', 'image_id', 'object_id']].values.tolist() == [[issue, 'a', 40]]
    assert found.score.iloc[0] == pytest.approx(score)
    assert found.details.iloc[0].startswith('object 40: ')


def test_clean_table_has_no_annotation_issue(tmp_path):
    s = detection(tmp_path, CLEAN, seg=json.dumps([[1, 1, 9, 1, 9, 9]]))
    found = check_annotations(s)
    assert len(found) == 0 and found.columns.tolist() == ISSUE_COLUMNS + ['object_id']


def test_box_within_outside_px_of_the_edge_is_fine(tmp_path):
    s = detection(tmp_path, with_object(('car', -0.5, 0, W + 0.5, H + 1)))
    assert len(check_annotations(s)) == 0
    assert check_annotations(s, QualityThresholds(outside_px=0.25)).issue.tolist() == ['box_partly_outside']


def test_unknown_class(tmp_path):
    s = detection(tmp_path, CLEAN)
    s.objects.loc[1, 'label'] = 'lorry'  # `Samples` refuses unknown classes; a table edited later can carry one
    found = check_annotations(s)
    assert found[['issue', 'object_id', 'label']].values.tolist() == [['unknown_class', 20, 'lorry']]


def test_duplicates_same_class_same_image_only(tmp_path):
    boxes = {'a': CLEAN['a'] + [('car', 5.2, 5, 20, 10), ('person', 5, 5, 20, 10)],  # 40 duplicates 10; 50 other class
             'b': CLEAN['b'] + [('car', 5, 5, 20, 10)]}  # same box as 10, another image
    found = check_annotations(detection(tmp_path, boxes))
    assert found[['issue', 'object_id']].values.tolist() == [['duplicate_box', 40]]
    assert found.score.iloc[0] == pytest.approx(19.8 / 20.2)
    assert 'duplicate of object 10' in found.details.iloc[0]


def test_crowd_and_normal_box_are_not_duplicates(tmp_path):
    s = detection(tmp_path, with_object(('car', 5, 5, 20, 10)))
    s.objects.loc[s.objects.object_id == 40, 'iscrowd'] = 1
    assert len(check_annotations(s)) == 0


def brute_force_pairs(o: pd.DataFrame, thr: float) -> dict:
    "Every pair (i, j), i < j, of one image, class and crowd flag with IoU > `thr`, by a plain double loop."
    b = o[['x', 'y', 'w', 'h']].to_numpy(float)
    key = list(zip(o.image_id, o.label, o.iscrowd))
    out = {}
    for i in range(len(o)):
        for j in range(i + 1, len(o)):
            if key[i] != key[j] or min(b[i, 2], b[i, 3], b[j, 2], b[j, 3]) <= 0:
                continue
            iw = min(b[i, 0] + b[i, 2], b[j, 0] + b[j, 2]) - max(b[i, 0], b[j, 0])
            ih = min(b[i, 1] + b[i, 3], b[j, 1] + b[j, 3]) - max(b[i, 1], b[j, 1])
            inter = max(iw, 0) * max(ih, 0)
            iou = inter / (b[i, 2] * b[i, 3] + b[j, 2] * b[j, 3] - inter)
            if iou > thr:
                out[(i, j)] = iou
    return out


def test_duplicate_boxes_equal_brute_force():
    rng = np.random.default_rng(0)
    n = 600
    o = pd.DataFrame(dict(image_id=rng.integers(0, 30, n).astype(str), label=rng.choice(['a', 'b', 'c'], n),
                          iscrowd=rng.choice([0, 0, 0, 1], n), x=rng.integers(0, 3, n) * 0.5,
                          y=rng.integers(0, 3, n) * 0.5, w=rng.choice([20.0, 20.5, 0.0], n), h=20.0))
    for thr in (0.95, 0.9):
        want = brute_force_pairs(o, thr)
        for chunk in (1 << 22, 7):  # one stack per group size, and many small stacks
            got = duplicate_boxes(o, thr, chunk=chunk)
            assert dict(zip(zip(got.i, got.j), got.iou)) == pytest.approx(want)
        assert len(want) > 50


def test_polygons_and_images_without_objects(tmp_path):
    s = detection(tmp_path, CLEAN, empty=['c'], seg=json.dumps([[1, 1, 9, 1, 9, 9]]))
    s.objects['segmentation'] = s.objects['segmentation'].astype(object)
    s.objects.loc[0, 'segmentation'] = '[[1, 1, 9, 1]]'  # 2 points
    s.objects.loc[1, 'segmentation'] = '[[1, 1, 9, 1, 9]]'  # odd
    s.objects.loc[2, 'segmentation'] = '{"size": [48, 64], "counts": "abc"}'  # RLE: not judged
    s.objects.loc[3, 'segmentation'] = '[[1, 1, 9, 1, 9, 9], [2, 2]]'  # second polygon degenerate
    s.objects.loc[4, 'segmentation'] = None
    s.objects.loc[5, 'segmentation'] = '[[1, 2'  # not JSON
    found = check_annotations(s).set_index('object_id', drop=False)
    poly = found[found.issue == 'degenerate_polygon']
    assert poly.object_id.tolist() == [10, 20, 40, 60]
    assert [d.split(': ', 1)[1] for d in poly.details] == [
        'polygon 0 has 2 point(s); a polygon needs at least 3', 'polygon 0 has an odd number of coordinates (5)',
        'polygon 1 has 1 point(s); a polygon needs at least 3', 'segmentation is not valid JSON']
    empty = found[found.issue == 'no_annotations']
    assert empty.image_id.tolist() == ['c'] and empty.object_id.isna().all() and empty.severity.tolist() == ['info']


def test_object_level_class_imbalance(tmp_path):
    boxes = {'a': [('car', 3 * k, 3, 5, 5) for k in range(10)], 'b': [('bus', 5, 5, 10, 10)]}
    found = check_annotations(detection(tmp_path, boxes))
    assert found[['issue', 'label', 'object_id']].values.tolist() == [['class_imbalance', 'bus', 110]]
    assert found.score.iloc[0] == 10.0 and '1 objects of `bus` vs 10 of `car`' in found.details.iloc[0]


def test_many_objects_vectorized():
    "100,000 objects in 10,000 images: planted defects are found exactly (the checks are vectorized, not per row)."
    rng = np.random.default_rng(0)
    n_img, n = 10_000, 100_000
    ids = np.array([f'im{i}' for i in range(n_img)])
    df = pd.DataFrame(dict(image_id=ids, path=[f'{i}.jpg' for i in ids], split='train', width=640, height=480))
    x, y = rng.uniform(0, 400, n), rng.uniform(0, 300, n)
    w, h = rng.uniform(20, 100, n), rng.uniform(20, 100, n)
    seg = [f'[[{a:.1f}, {b:.1f}, {a + 9:.1f}, {b:.1f}, {a + 9:.1f}, {b + 9:.1f}]]' for a, b in zip(x, y)]
    o = pd.DataFrame(dict(image_id=ids[rng.integers(0, n_img - 200, n)], object_id=np.arange(n), label=rng.choice(
        ['a', 'b', 'c'], n), x=x, y=y, w=w, h=h, iscrowd=0, area=w * h, segmentation=seg))
    o.loc[::1000, 'w'] = -1.0  # 100 degenerate
    o.loc[5::2000, 'segmentation'] = '[[1, 2, 3, 4]]'  # 50 degenerate polygons
    dup = o.iloc[7::400].assign(object_id=lambda d: d.object_id + n, x=lambda d: d.x + 0.1)  # 250 duplicates
    o = pd.concat([o, dup], ignore_index=True)
    found = check_annotations(Samples(df, '/nonexistent', 'detection', objects=o))
    c = found.issue.value_counts()
    assert c['degenerate_box'] == 100 and c['degenerate_polygon'] == 50
    assert set(found.object_id[found.issue == 'duplicate_box']) == set(dup.object_id)
    empty = set(found.image_id[found.issue == 'no_annotations'])
    assert empty == set(ids) - set(o.image_id) and set(ids[-200:]) <= empty  # the last 200 have none


def test_detection_find_issues_has_annotation_rows_and_object_ids(tmp_path, caplog):
    s = detection(tmp_path, with_object(('car', 5.1, 5, 20, 10)), empty=['c'], sizes={'b': (48, 64)})
    s.df.loc[s.df.image_id == 'b', ['width', 'height']] = [W, H]  # the annotations say 64x48, the file is 48x64
    with caplog.at_level(logging.INFO, logger='cvbench.data.quality'):
        found = find_issues(s, scan_files(s.paths(), n_workers=1))  # label issues on by default: skipped, noted
    assert 'label issues skipped' in caplog.text
    assert found.columns.tolist() == ISSUE_COLUMNS + ['object_id']
    assert found[['issue', 'image_id']].values.tolist() == [
        ['size_mismatch', 'b'], ['duplicate_box', 'a'], ['no_annotations', 'c']]
    assert found.object_id.fillna(0).tolist() == [0, 40, 0]


def test_text_table_does_not_crash(tmp_path):
    make_imagefolder(tmp_path, {'x': 3})
    s = Samples(pd.DataFrame(dict(image_id=['0', '1', '2'], path=[f'x/{i}.png' for i in range(3)], split='',
                                  text=['EXIT', 'STOP', 'GO'])), tmp_path, 'text')
    found = find_issues(s, scan_files(s.paths(), n_workers=1))
    assert found.columns.tolist() == ISSUE_COLUMNS and not found.issue.isin(['label_issue', 'class_imbalance']).any()


def test_classification_issues_unchanged(tmp_path):
    make_imagefolder(tmp_path, {'a': 20, 'b': 1})
    from cvbench.data.formats import read_imagefolder

    s = read_imagefolder(tmp_path)
    found = find_issues(s, scan_files(s.paths(), n_workers=1), QualityThresholds(label_issues=False))
    assert found.columns.tolist() == ISSUE_COLUMNS  # no object_id column for a table without objects
    imb = found[found.issue == 'class_imbalance']
    assert imb.path.tolist() == ['b/0.png'] and imb.score.tolist() == [20.0]
    with pytest.raises(Exception, match='annotation checks need a samples table with objects'):
        check_annotations(s)


def test_data_check_cli_on_detection_table(tmp_path):
    s = detection(tmp_path, with_object(('car', 5.1, 5, 20, 10)), empty=['c'])
    s.save(tmp_path / 'det.parquet')
    out = tmp_path / 'chk'
    r = cli('data', 'check', tmp_path / 'det.parquet', '--out', out, '--workers', '1', '--fail-on', 'warning',
            cwd=tmp_path)
    assert r.returncode == 1, r.stderr  # a duplicate box is a warning
    issues = pd.read_csv(out / 'issues.csv')
    dup = issues[issues.issue == 'duplicate_box']
    assert dup[['image_id', 'object_id', 'label', 'severity']].values.tolist() == [['a', 40, 'car', 'warning']]
    summary = json.loads((out / 'summary.json').read_text())
    assert summary['issues'] == {'duplicate_box': 1, 'no_annotations': 1}
    assert summary['by_severity'] == {'warning': 1, 'info': 1}
    assert '## duplicate_box (1)' in (out / 'report.md').read_text()
    assert not fails(issues, 'error') and fails(issues, 'info')  # what `--fail-on error` / `info` decide


def test_planted_defects_on_synthetic_scenes(tmp_path):
    "On realistic scenes (polygons, occlusion, many sizes): no false alarm, then every planted defect found exactly."
    from cvbench.data.datasets import synthetic_scenes

    s = synthetic_scenes(tmp_path / 'scenes', n=40, seed=3)
    assert len(check_annotations(s)) == 0  # clean annotations: nothing flagged
    o = s.objects.copy()
    o['segmentation'] = o['segmentation'].astype(object)
    rows = np.random.default_rng(0).permutation(len(o))
    plant = dict(zip(['box_outside', 'degenerate_box', 'tiny_box', 'degenerate_polygon', 'duplicate_box'],
                     np.array_split(rows[:20], 5)))
    sizes = s.df.set_index('image_id')[['width', 'height']]
    for r in plant['box_outside']:
        o.loc[r, 'x'] = sizes.width[o.image_id[r]] + 5
    o.loc[plant['degenerate_box'], 'w'] = 0.0
    o.loc[plant['tiny_box'], ['w', 'h']] = 1.0
    o.loc[plant['degenerate_polygon'], 'segmentation'] = '[[1, 1, 5, 5]]'
    copies = o.loc[plant['duplicate_box']].assign(object_id=lambda d: d.object_id + 10_000, x=lambda d: d.x + 0.05)
    keep_empty = sorted(set(s.df.image_id) - set(o.image_id[rows[:20]]))[:2]  # two images lose all their objects
    o = pd.concat([o[~o.image_id.isin(keep_empty)], copies], ignore_index=True)
    s2 = Samples(s.df, s.root, 'detection', s.classes, objects=o, category_ids=s.category_ids)
    found = check_annotations(s2)
    for issue, r in plant.items():
        want = set(copies.object_id) if issue == 'duplicate_box' else set(s.objects.object_id[r])
        assert set(found.object_id[found.issue == issue]) == want, issue
    assert set(found.image_id[found.issue == 'no_annotations']) == set(keep_empty)
    assert set(found.issue) <= set(plant) | {'no_annotations', 'class_imbalance'}
