"""Detection in the data-check, datasheet and evaluation reports: counts per class from the objects table (checked
against the COCO file itself), flagged boxes drawn, object-level exclusions, the report's curves, TIDE figure and
galleries at the confusion matrix's operating point, a numpy IoU equal to torchvision's, and what conversions keep."""

import json, subprocess, sys
from collections import Counter
from pathlib import Path
import numpy as np, pandas as pd
import pytest
from PIL import Image
from conftest import run_cli
from cvbench.data.samples import Samples


def small_coco(folder: Path, seed: int = 0) -> Path:
    "A COCO file of 10 tiny images in two splits, category ids 3 and 7, a crowd box, a mask, and one duplicate box."
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    images, anns = [], []
    for i in range(1, 11):
        Image.new('RGB', (64, 48), (20 * i, 90, 140)).save(folder / f'im{i}.png')
        images.append(dict(id=i, file_name=f'im{i}.png', width=64, height=48, split='train' if i <= 7 else 'valid'))
        for _ in range(int(rng.integers(1, 4))):
            x, y = rng.uniform(0, 30, 2)
            w, h = rng.uniform(6, 30), rng.uniform(6, 16)
            anns.append(dict(id=len(anns) + 1, image_id=i, category_id=int(rng.choice([3, 7])), bbox=[x, y, w, h],
                             area=w * h, iscrowd=0))
    anns[0]['segmentation'] = [[1, 1, 10, 1, 10, 10, 1, 10]]
    anns[0]['area'] = 81.0
    anns[1]['iscrowd'] = 1
    dup = dict(anns[2], id=len(anns) + 1, bbox=[v + 0.01 for v in anns[2]['bbox']])  # IoU > 0.95, same class
    anns.append(dup)
    cats = [dict(id=3, name='car'), dict(id=7, name='person')]
    f = folder / 'instances.json'
    f.write_text(json.dumps(dict(images=images, annotations=anns, categories=cats)))
    return f


@pytest.fixture(scope='module')
def coco(tmp_path_factory) -> Path:
    return small_coco(tmp_path_factory.mktemp('coco'))


def _objects_per_class_split(path: Path) -> dict:
    "Independent count from the JSON: (class, split) -> objects."
    d = json.loads(path.read_text())
    split = {i['id']: i['split'] for i in d['images']}
    name = {c['id']: c['name'] for c in d['categories']}
    return Counter((name[a['category_id']], split[a['image_id']]) for a in d['annotations'])


# 1. the datasheet of a detection table (crashed: groupby label/split on the per-image table)
def test_datasheet_counts_objects_per_class_and_split(coco):
    from cvbench.data.detection import read_coco
    from cvbench.report.documents import datasheet

    s = read_coco(coco)
    sheet = datasheet(s, source=str(coco))
    assert '## Objects (and images) per class and split' in sheet and f'{len(s.objects)} objects' in sheet
    from cvbench.report.documents import class_counts

    t = class_counts(s).set_index('class')
    want = _objects_per_class_split(coco)
    for (cls, split), n in want.items():
        assert t.loc[cls, split] == n, (cls, split)
    assert t['total'].sum() == len(json.loads(coco.read_text())['annotations']) == len(s.objects)
    d = json.loads(coco.read_text())
    imgs = {c: len({a['image_id'] for a in d['annotations'] if a['category_id'] == k}) for k, c in [(3, 'car'),
                                                                                                      (7, 'person')]}
    assert t['images'].to_dict() == imgs


def test_datasheet_of_a_text_table_has_no_class_table(tmp_path):
    from cvbench.report.documents import datasheet

    df = pd.DataFrame(dict(image_id=['a', 'b'], path=['a.png', 'b.png'], split=['test', 'test'], text=['x', 'y']))
    s = Samples(df, tmp_path, 'text', [])
    sheet = datasheet(s, source='ocr.csv')
    assert 'per split' not in sheet and '- **images**: 2' in sheet
    from cvbench.report.documents import class_counts

    assert class_counts(s) is None


def test_cli_datasheet_and_exclude_on_coco(coco, tmp_path):
    rc, out, err = run_cli('data', 'check', coco, '--out', tmp_path / 'chk', '--exclude', 'duplicate_box',
                           '--workers', '1')
    assert rc == 0, err
    summary = json.loads((tmp_path / 'chk' / 'summary.json').read_text())
    n_ann = len(json.loads(coco.read_text())['annotations'])
    assert summary['objects'] == n_ann and summary['issues']['duplicate_box'] == 1
    sheet = (tmp_path / 'chk' / 'datasheet.md').read_text()
    assert '- duplicate_box: 1 object(s)' in sheet
    clean = pd.read_parquet(tmp_path / 'chk' / 'samples_clean.objects.parquet')
    assert len(clean) == n_ann - 1  # only the duplicate box went, not its image
    assert '| duplicate_box' in out and 'objects' in out
    rc, out, err = run_cli('data', 'datasheet', coco, '--out', tmp_path / 'ds')
    assert rc == 0, err
    assert '| car ' in (tmp_path / 'ds' / 'datasheet.md').read_text()


# 2. object-level issues: counts, the flagged box drawn, the object id listed
def test_issue_counts_counts_objects_for_object_level_issues():
    from cvbench.report.documents import issue_counts

    iss = pd.DataFrame(dict(image_id=['1', '1', '1', '2', '3'], issue=['duplicate_box'] * 3 + ['dark', 'dark'],
                            severity=['warning'] * 3 + ['info'] * 2,
                            object_id=pd.array([4, 5, 6, None, None], dtype='Int64')))
    c = issue_counts(iss).set_index('issue')
    assert c.loc['duplicate_box', 'images'] == 1 and c.loc['duplicate_box', 'objects'] == 3
    assert c.loc['dark', 'images'] == 2 and c.loc['dark', 'objects'] == 0
    assert 'objects' not in issue_counts(iss.drop(columns='object_id'))


def test_quality_gallery_draws_the_flagged_box_and_its_twin(tmp_path):
    from cvbench.report.documents import _flagged_boxes, quality_sections

    Image.new('RGB', (40, 30), (0, 0, 0)).save(tmp_path / 'a.png')
    objects = pd.DataFrame(dict(image_id=['a', 'a', 'a'], object_id=[1, 2, 3], label=['car'] * 3,
                                x=[2.0, 2.2, 20.0], y=[2.0, 2.1, 5.0], w=[10.0] * 3, h=[8.0] * 3))
    iss = pd.DataFrame(dict(image_id=['a'], path=['a.png'], split=['train'], label=['car'], issue=['duplicate_box'],
                            severity=['warning'], score=[0.97], details=['object 2: duplicate of object 1 (IoU 0.970)'],
                            object_id=pd.array([2], dtype='Int64')))
    (boxes,) = _flagged_boxes(iss, objects)
    assert list(boxes['object_id']) == [2, 1] and list(boxes['missed']) == [True, False]
    plain = quality_sections(iss, tmp_path, tmp_path / 'plain', {})
    drawn = quality_sections(iss, tmp_path, tmp_path / 'drawn', {}, objects=objects)
    assert 'object_id' in list(drawn[2].tables[0].columns)
    green = lambda f: (np.asarray(Image.open(f).convert('RGB')).astype(int) * [-1, 1, -1]).sum(2).max()
    assert green(drawn[2].figures[0]) > 50 > green(plain[2].figures[0])  # the GT box is drawn in green


# 3. the detection report: both PR figures, the TIDE figure, galleries at the operating point without crowd FPs
@pytest.fixture(scope='module')
def scenes(tmp_path_factory):
    from cvbench.data.datasets import synthetic_scenes, simulate_detections

    s = synthetic_scenes(tmp_path_factory.mktemp('scenes'), n=24, seed=0)
    return s, simulate_detections(s, seed=1)


def test_detection_report_sections(scenes, tmp_path):
    from cvbench.evaluate.detection import evaluate_detection
    from cvbench.evaluate.detection_errors import detection_errors
    from cvbench.report.documents import detection_sections

    s, det = scenes
    ev = evaluate_detection(s, det, n_resamples=0)
    secs = {x.title: x for x in detection_sections(ev, s, det, tmp_path, {}, n_worst=4, score_threshold=0.3)}
    curves = [Path(f).name for f in secs['Precision-recall and F1 curves'].figures]
    assert curves == ['pr_curves.png', 'pr_curves_50_95.png', 'f1_confidence.png']
    assert [Path(f).name for f in secs['Error breakdown'].figures] == ['tide.png']
    gal = secs['False positives and missed objects']
    want = detection_errors(s, det, score_threshold=0.3)
    want = want[~want['ignored']].groupby(['kind', 'type']).size()
    assert gal.tables[0].set_index(['kind', 'type'])['errors'].to_dict() == want.to_dict()
    assert '0.3' in gal.text
    everything = detection_errors(s, det).groupby(['kind', 'type']).size()
    assert everything.sum() > want.sum()  # the threshold matters on this data


# 4. IoU without torch, equal to torchvision's to the bit
def test_box_iou_equals_torchvision_bitwise():
    import torch
    from torchvision.ops import box_convert, box_iou
    from cvbench.evaluate.detection_errors import box_iou_xywh

    rng = np.random.default_rng(3)
    for _ in range(20):
        a = rng.uniform(0, 100, (25, 4)) * rng.choice([1, 0.01, 0], (25, 4))
        b = np.concatenate([rng.uniform(0, 100, (15, 4)), np.round(a[:5])])
        tv = np.nan_to_num(box_iou(*(box_convert(torch.as_tensor(x), 'xywh', 'xyxy') for x in (a, b))).numpy())
        assert np.array_equal(box_iou_xywh(a, b), tv)


def test_error_analysis_does_not_import_torch(coco):
    code = ('import sys, pandas as pd\nfrom cvbench.data.detection import read_coco\n'
            'from cvbench.evaluate.detection_errors import detection_confusion, error_breakdown\n'
            f's = read_coco({str(coco)!r})\n'
            "d = s.objects[['image_id', 'label', 'x', 'y', 'w', 'h']].assign(score=0.9)\n"
            'detection_confusion(s, d)\nerror_breakdown(s, d)\n'
            "print('torch' in sys.modules, 'torchvision' in sys.modules)\n")
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ['False', 'False']


# 5. what a conversion keeps, as the runs chapter now says
def test_conversion_losses_are_as_documented(coco, tmp_path):
    from cvbench.data.detection import read_detection
    from cvbench.runs import convert_data

    orig = read_detection(coco)
    yolo = read_detection(convert_data(coco, 'yolo', tmp_path / 'yolo'))
    voc = read_detection(convert_data(coco, 'voc', tmp_path / 'voc'))
    assert orig.objects['iscrowd'].sum() == 1 and orig.objects['segmentation'].notna().sum() == 1
    assert yolo.objects['iscrowd'].sum() == 0 and yolo.objects['segmentation'].isna().all()
    assert voc.objects['iscrowd'].sum() == 1 and voc.objects['segmentation'].isna().all()
    assert sorted(orig.category_ids.values()) == [3, 7] and sorted(yolo.category_ids.values()) != [3, 7]
    nb = json.loads((Path(__file__).parents[1] / 'nbs' / '55_runs.ipynb').read_text())
    text = ' '.join(''.join(c['source']) for c in nb['cells'] if c['cell_type'] == 'markdown')
    assert 'every box, class id, crowd flag and mask survives' not in text
    assert 'YOLO keeps only boxes and classes' in text
