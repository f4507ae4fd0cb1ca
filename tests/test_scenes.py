"Synthetic detection scenes and the simulated detector, checked against pycocotools and torchvision.ops."

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils
from torchvision.ops import box_iou

from cvbench.core import CvbenchError
from cvbench.data.datasets import load_dataset, open_dataset, simulate_detections, synthetic_scenes
from cvbench.data.samples import OBJECT_COLUMNS, load_samples_table

N = 120
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


@pytest.fixture(scope='module')
def scenes_dir(tmp_path_factory) -> Path:
    "120 scenes of seed 0 (written once for the module)."
    out = tmp_path_factory.mktemp('scenes') / 'a'
    synthetic_scenes(out, n=N, seed=0)
    return out


@pytest.fixture(scope='module')
def scenes(scenes_dir):
    return load_samples_table(scenes_dir / 'samples.parquet')


def _files(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob('*')) if p.is_file()
            and p.suffix in ('.jpg', '.png')}


def test_same_seed_same_files_and_table(scenes_dir, scenes, tmp_path):
    again = synthetic_scenes(tmp_path / 'b', n=N, seed=0)
    a, b = _files(scenes_dir), _files(tmp_path / 'b')
    assert len(a) == 2 * N and a.keys() == b.keys()
    assert all(a[k] == b[k] for k in a), 'same seed must write byte-identical images and masks'
    pd.testing.assert_frame_equal(scenes.df, again.df)
    pd.testing.assert_frame_equal(scenes.objects, again.objects)
    assert scenes.version == again.version


def test_other_seed_differs(scenes, tmp_path):
    other = synthetic_scenes(tmp_path / 'c', n=10, seed=1)
    first = scenes.objects[scenes.objects['image_id'] < 'scene_00010']
    assert other.objects[['x', 'y']].iloc[0].tolist() != first[['x', 'y']].iloc[0].tolist()
    a = np.asarray(Image.open(tmp_path / 'c' / other.df['path'][0]))
    b = np.asarray(Image.open(scenes.root / scenes.df['path'][0]))
    assert np.abs(a.astype(int) - b).mean() > 5


def _polygon(seg: str) -> np.ndarray:
    return np.array(json.loads(seg)[0], float).reshape(-1, 2)


def test_boxes_inside_image_and_tight_around_drawn_pixels(scenes, scenes_dir):
    o = scenes.objects.merge(scenes.df[['image_id', 'width', 'height']], on='image_id')
    assert (o['x'] >= 0).all() and (o['y'] >= 0).all() and (o['w'] > 0).all() and (o['h'] > 0).all()
    assert (o['x'] + o['w'] <= o['width']).all() and (o['y'] + o['h'] <= o['height']).all()
    tight = 0
    for iid, g in o.groupby('image_id'):
        owner = np.asarray(Image.open(scenes_dir / 'masks' / f'{iid}.png'))
        for k, r in enumerate(g.itertuples(), start=1):
            p = _polygon(r.segmentation)
            # the box is the polygon's bounds
            np.testing.assert_allclose([r.x, r.y, r.x + r.w, r.y + r.h], [*p.min(0), *p.max(0)], atol=1e-9)
            ys, xs = np.nonzero(owner == k)  # pixels where this object was drawn and shows
            assert len(xs), f'{iid}: object {k} not drawn'
            assert r.x - 1 <= xs.min() and xs.max() + 1 <= r.x + r.w + 1
            assert r.y - 1 <= ys.min() and ys.max() + 1 <= r.y + r.h + 1
            # rasterized independently by pycocotools
            full = mask_utils.decode(mask_utils.frPyObjects([p.ravel().tolist()], r.height, r.width))[..., 0]
            if (owner == k).sum() >= full.sum() - 2:  # nothing hides it: the drawn pixels fill the box
                tight += 1
                assert abs(xs.min() - r.x) <= 2 and abs(xs.max() + 1 - (r.x + r.w)) <= 2
                assert abs(ys.min() - r.y) <= 2 and abs(ys.max() + 1 - (r.y + r.h)) <= 2
                inter = ((owner == k) & (full > 0)).sum()
                assert inter / max((owner == k).sum(), full.sum()) > 0.8
    assert tight > len(o) / 2


def test_polygon_area_matches_pycocotools(scenes):
    o = scenes.objects
    rel = []
    for r in o.itertuples():
        p = _polygon(r.segmentation)
        rle = mask_utils.frPyObjects([p.ravel().tolist()], 120, 160)
        coco = float(mask_utils.area(rle).sum())
        perimeter = np.hypot(*np.diff(np.r_[p, p[:1]], axis=0).T).sum()
        assert abs(r.area - coco) <= 0.25 * perimeter, (r.image_id, r.area, coco)
        rel.append(abs(r.area - coco) / r.area)
        bx, by, bw, bh = mask_utils.toBbox(rle)[0]  # pixel bounds of pycocotools' mask: thin star tips may miss
        np.testing.assert_allclose([bx, by, bx + bw, by + bh], [r.x, r.y, r.x + r.w, r.y + r.h], atol=2)
    assert np.mean(rel) < 0.01


def test_metadata_present(scenes):
    df, o = scenes.df, scenes.objects
    assert scenes.task == 'detection' and scenes.classes == ['circle', 'square', 'triangle', 'star', 'cross']
    assert set(df['lighting']) == {'day', 'dusk', 'night'}
    assert set(df['blur']) == {'none', 'blur'} and set(df['noise']) == {'low', 'high'}
    assert set(df['split']) == {'train', 'valid', 'test'}
    assert list(o.columns[:len(OBJECT_COLUMNS)]) == list(OBJECT_COLUMNS) and {'occluded', 'size'} <= set(o.columns)
    assert (o['iscrowd'] == 0).all() and o['object_id'].is_unique and o['object_id'].min() >= 1
    expected_size = np.where(o['area'] < 32**2, 'small', np.where(o['area'] < 96**2, 'medium', 'large'))
    assert (o['size'] == expected_size).all() and {'small', 'medium'} <= set(o['size'])
    per_image = o.groupby('image_id')['occluded'].sum().reindex(df['image_id'], fill_value=0)
    assert (df['occlusion'].to_numpy() == per_image.to_numpy()).all() and o['occluded'].any()
    assert all(len(_polygon(s)) >= 3 for s in o['segmentation'])
    # lighting scales brightness: night images are far darker than day images
    mean = {i: np.asarray(Image.open(scenes.root / p)).mean() for i, p in zip(df['image_id'], df['path'])}
    bright = df.assign(b=df['image_id'].map(mean)).groupby('lighting')['b'].mean()
    assert bright['day'] > bright['dusk'] > bright['night'] and bright['night'] < 0.4 * bright['day']


def test_bad_arguments(tmp_path):
    for kw, msg in [(dict(n=0), '`n`'), (dict(size=(20, 20)), '`size`'), (dict(fmt='gif'), '`fmt`'),
                    (dict(classes=()), '`classes`'), (dict(splits=(1, -1, 0)), '`splits`')]:
        with pytest.raises(CvbenchError, match=msg):
            synthetic_scenes(tmp_path, **kw)


def _matches(samples, det: pd.DataFrame, iou: float = 0.5) -> tuple[pd.Series, pd.Series]:
    "Greedy matching by falling score, same image and class, IoU >= `iou`: (found per object, true positive per row)."
    o = samples.objects

    def xyxy(f):
        b = torch.tensor(f[['x', 'y', 'w', 'h']].to_numpy(), dtype=torch.float64)
        return torch.cat([b[:, :2], b[:, :2] + b[:, 2:]], 1)

    ious = box_iou(xyxy(det), xyxy(o)).numpy()
    same = (det['image_id'].to_numpy()[:, None] == o['image_id'].to_numpy()) & (
        det['label'].to_numpy()[:, None] == o['label'].to_numpy())
    ious = np.where(same, ious, -1.0)
    used, tp = np.zeros(len(o), bool), np.zeros(len(det), bool)
    for i in np.argsort(-det['score'].to_numpy(), kind='stable'):
        cand = np.where(used, -1.0, ious[i])
        j = int(cand.argmax())
        if cand[j] >= iou:
            used[j] = tp[i] = True
    return pd.Series(used, index=o.index), pd.Series(tp, index=det.index)


def test_simulate_detections_deterministic(scenes):
    a, b = simulate_detections(scenes, seed=0), simulate_detections(scenes, seed=0)
    pd.testing.assert_frame_equal(a, b)
    assert not a.equals(simulate_detections(scenes, seed=1))
    assert list(a.columns) == ['image_id', 'label', 'score', 'x', 'y', 'w', 'h']
    assert set(a['image_id']) <= set(scenes.df['image_id']) and set(a['label']) <= set(scenes.classes)
    wh = scenes.df.set_index('image_id').loc[a['image_id'], ['width', 'height']].to_numpy()
    assert (a[['x', 'y']].to_numpy() >= 0).all() and (a[['x', 'y']].to_numpy() + a[['w', 'h']].to_numpy() <= wh).all()


def test_night_has_lower_recall_and_scores_track_correctness(scenes):
    det = simulate_detections(scenes, seed=0)
    found, tp = _matches(scenes, det)
    light = scenes.objects['image_id'].map(scenes.df.set_index('image_id')['lighting'])
    recall = found.groupby(light).mean()
    assert recall['day'] - recall['night'] > 0.1, recall.to_dict()
    assert 0.5 < found.mean() < 0.85  # quality 0.8 finds about 80 %, a few with wrong class or box
    assert det.loc[tp, 'score'].mean() > det.loc[~tp, 'score'].mean() + 0.2
    # every kind of mistake is there: misses, false positives (confusions, duplicates, background)
    assert (~found).sum() > 0 and (~tp).sum() > 0.1 * len(det)
    # small and occluded objects are found less often
    size = scenes.objects['size']
    assert found[size == 'small'].mean() < found[size != 'small'].mean()
    assert found[scenes.objects['occluded']].mean() < found[~scenes.objects['occluded']].mean()


def test_quality_controls_recall(scenes):
    lo, _ = _matches(scenes, simulate_detections(scenes, quality=0.4))
    hi, _ = _matches(scenes, simulate_detections(scenes, quality=0.95))
    assert hi.mean() - lo.mean() > 0.3


def test_bundled_scenes(tmp_path):
    s = load_dataset('scenes', cache_dir=tmp_path)
    assert (len(s), s.task, s.name, s.root) == (200, 'detection', 'scenes', tmp_path / 'scenes')
    first = synthetic_scenes(tmp_path / 'again', n=3, seed=0)
    pd.testing.assert_frame_equal(first.objects, s.objects[s.objects['image_id'] < 'scene_00003'])
    (tmp_path / 'scenes' / s.df['path'][5]).write_bytes(b'broken')
    checked = open_dataset('scenes', cache_dir=tmp_path)
    assert len(checked) == 199 and len(checked.skipped) == 1
    kept = s.objects[s.objects['image_id'] != s.df['image_id'][5]]
    assert len(checked.objects) == len(kept) and checked.category_ids == s.category_ids
    assert 'img_brightness' in checked.df and 'lighting' in checked.df


def _coco_ap(samples, det: pd.DataFrame, image_ids) -> float:
    "pycocotools' AP@[.5:.95] of `det` on the images `image_ids` (GT and results built here, not by cvbench)."
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    ids = {iid: k + 1 for k, iid in enumerate(samples.df['image_id'])}
    cats = {c: k + 1 for k, c in enumerate(samples.classes)}
    gt = COCO()
    gt.dataset = dict(
        images=[dict(id=ids[i], width=160, height=120) for i in samples.df['image_id']],
        categories=[dict(id=v, name=k) for k, v in cats.items()],
        annotations=[dict(id=int(r.object_id), image_id=ids[r.image_id], category_id=cats[r.label],
                          bbox=[r.x, r.y, r.w, r.h], area=r.area, iscrowd=0) for r in samples.objects.itertuples()])
    gt.createIndex()
    dt = gt.loadRes([dict(image_id=ids[r.image_id], category_id=cats[r.label], bbox=[r.x, r.y, r.w, r.h],
                          score=r.score) for r in det.itertuples()])
    e = COCOeval(gt, dt, 'bbox')
    e.params.imgIds = [ids[i] for i in image_ids]
    e.evaluate()
    e.accumulate()
    e.summarize()
    return float(e.stats[0])


def test_night_ap_lower_with_pycocotools(scenes):
    det = simulate_detections(scenes, seed=0)
    df = scenes.df
    day = _coco_ap(scenes, det, df.loc[df['lighting'] == 'day', 'image_id'])
    night = _coco_ap(scenes, det, df.loc[df['lighting'] == 'night', 'image_id'])
    assert 0.2 < day < 0.9 and day - night > 0.1, (day, night)
