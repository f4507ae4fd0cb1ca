"""Detection formats: COCO, Pascal VOC and YOLO round trips through the samples table, checked against independent
readers (pycocotools, globox), and every bad input of issue 12 with its message or its documented behaviour."""

import json, os
from pathlib import Path
import numpy as np, pandas as pd
import pytest
from PIL import Image
from cvbench.data.detection import (convert_dataset, read_coco, read_detection, read_voc, read_yolo, write_coco,
                                    write_voc, write_yolo)
from cvbench.data.formats import read_dataset
from cvbench.data.samples import DataError, load_samples_table

W, H = 64, 48


def make_coco(folder: Path, n_images=6, seed=0) -> Path:
    "Tiny PNGs and a COCO file with everything COCO can hold: ids 3/7/12, crowd RLE, polygons, attributes, metadata."
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    images, anns = [], []
    for i in range(n_images):
        Image.new('RGB', (W, H), (30 * i, 80, 120)).save(folder / f'im{i}.png')
        images.append(dict(id=100 + 7 * i, file_name=f'im{i}.png', width=W, height=H, lighting=['day', 'night'][i % 2]))
        for _ in range(i % 4):  # image 0 and 4 have no objects
            x, y = rng.uniform(0, 30), rng.uniform(0, 20)
            w, h = rng.uniform(1, W - 30), rng.uniform(1, H - 20)
            anns.append(dict(id=len(anns) + 1, image_id=100 + 7 * i, category_id=int(rng.choice([3, 7, 12])),
                             bbox=[x, y, w, h], iscrowd=0, area=w * h, segmentation=[[x, y, x + w, y, x + w, y + h]],
                             attributes={'occluded': bool(rng.integers(2))}))
    anns.append(dict(id=99, image_id=107, category_id=12, bbox=[0, 0, 4, 4], iscrowd=1, area=16.0,
                     segmentation={'size': [H, W], 'counts': [0, 4, 44, 4, 44, 4, 44, 4, H * W - 148]}))
    cats = [dict(id=12, name='car'), dict(id=3, name='cat'), dict(id=7, name='dog')]
    (folder / 'instances.json').write_text(json.dumps(dict(images=images, annotations=anns, categories=cats)))
    return folder / 'instances.json'


@pytest.fixture
def coco(tmp_path) -> Path:
    return make_coco(tmp_path / 'src')


def boxes(samples) -> np.ndarray:
    "The (n, 4) boxes of samples (or of an objects frame)."
    o = samples.objects if hasattr(samples, 'objects') else samples
    return o[['x', 'y', 'w', 'h']].to_numpy(float)


def in_order(samples) -> pd.DataFrame:
    "Objects with their image's file name, sorted by file, label and box (formats order objects differently)."
    o = samples.objects.assign(file=samples.objects.image_id.map(lambda p: Path(p).name))
    return o.assign(_x=o.x.round(4), _y=o.y.round(4)).sort_values(['file', 'label', '_x', '_y']).reset_index(drop=True)


# --- round trips -------------------------------------------------------------------------------------------------

def test_coco_to_coco_is_exact(coco, tmp_path):
    s = read_coco(coco)
    out = write_coco(s, tmp_path / 'out.json')
    a, b = json.loads(coco.read_text()), json.loads(out.read_text())
    assert b['images'] == a['images'] and b['annotations'] == a['annotations']
    cats = [sorted((c['id'], c['name']) for c in d['categories']) for d in (a, b)]
    assert cats[0] == cats[1]
    assert s.classes == ['cat', 'dog', 'car'] and s.category_ids == {'cat': 3, 'dog': 7, 'car': 12}


def test_pycocotools_loads_what_write_coco_writes(coco, tmp_path):
    from pycocotools.coco import COCO

    s = read_coco(coco)
    gt = COCO(str(write_coco(s, tmp_path / 'out.json')))
    assert sorted(gt.getImgIds()) == s.coco_ids().sort_values().tolist()
    assert sorted(gt.getCatIds()) == [3, 7, 12]
    anns = gt.loadAnns(gt.getAnnIds())
    assert sorted(a['id'] for a in anns) == sorted(s.objects.object_id)
    crowd = gt.loadAnns(gt.getAnnIds(iscrowd=True))
    assert [a['id'] for a in crowd] == [99] and gt.annToMask(crowd[0]).sum() == 16
    ref = COCO(str(coco))
    for a in anns:  # masks of polygons and RLE decode to the same pixels as the source file's
        assert (gt.annToMask(a) == ref.annToMask(ref.anns[a['id']])).all()


def test_coco_yolo_coco_keeps_every_box(coco, tmp_path):
    s = read_coco(coco)
    y = convert_dataset(coco, 'yolo', tmp_path / 'yolo')
    back = read_detection(convert_dataset(y, 'coco', tmp_path / 'coco'))
    assert len(back) == len(s) and back.classes == s.classes
    a, b = in_order(s), in_order(back)
    assert (a.label.to_numpy() == b.label.to_numpy()).all() and (a.file.to_numpy() == b.file.to_numpy()).all()
    err = np.abs(boxes(b) - boxes(a)) / np.array([W, H, W, H])
    assert err.max() < 1e-6
    assert back.df[['width', 'height']].values.tolist() == s.df[['width', 'height']].values.tolist()


def test_coco_voc_coco_keeps_boxes_crowd_and_attributes(coco, tmp_path):
    s = read_coco(coco).subset(None)
    s.objects['difficult'] = (s.objects.object_id % 2).astype('int64')
    back = read_detection(convert_dataset(write_voc(s, tmp_path / 'voc'), 'coco', tmp_path / 'coco'))
    a, b = in_order(s), in_order(back)
    np.testing.assert_allclose(boxes(b), boxes(a), atol=1e-9)
    assert back.classes == s.classes  # VOC's labels.txt keeps the class order
    for k in ('file', 'label', 'iscrowd', 'difficult'):
        assert b[k].tolist() == a[k].tolist(), k
    assert b.attributes.fillna('').tolist() == a.attributes.fillna('').tolist()


def test_splits_survive_voc_and_yolo(coco, tmp_path):
    s = read_coco(coco)
    s.df['split'] = ['train', 'train', 'valid', 'valid', 'test', '']
    s = s.subset(None)
    for to in ('voc', 'yolo', 'coco'):
        dst = {'voc': write_voc, 'yolo': write_yolo}.get(to, lambda x, o: write_coco(x, Path(o) / 'a.json'))
        back = read_detection(dst(s, tmp_path / to))
        assert back.split_counts() == s.split_counts(), to


def test_voc_box_convention(tmp_path):
    "VOC corners are 1-based and inclusive: xmin=1, xmax=10 is a 10-pixel box at x=0 (Detectron2's reading)."
    (tmp_path / 'a.xml').write_text('<annotation><filename>a.png</filename><size><width>64</width><height>48</height>'
                                    '</size><object><name>cat</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>10</xmax>'
                                    '<ymax>5</ymax></bndbox></object></annotation>')
    Image.new('RGB', (W, H)).save(tmp_path / 'a.png')
    s = read_voc(tmp_path)
    assert boxes(s).tolist() == [[0.0, 0.0, 10.0, 5.0]]
    out = write_voc(s, tmp_path / 'out')
    assert '<xmin>1</xmin><ymin>1</ymin><xmax>10</xmax><ymax>5</ymax>' in (out / 'Annotations' / 'a.xml').read_text()


# --- independent readers: globox ---------------------------------------------------------------------------------

def globox_boxes(aset, label=lambda b: b.label) -> dict:
    return {a.image_id: sorted((label(b), *np.round(b.ltrb, 6)) for b in a.boxes) for a in aset}


def our_boxes(s, key=lambda p: p, label=lambda l: l, offset=0.0) -> dict:
    o = s.objects
    got = {key(p): [] for p in s.df.path}
    path = s.df.set_index('image_id').path
    for r in o.itertuples():
        got[key(path[r.image_id])].append((label(r.label), *np.round([r.x + offset, r.y + offset, r.x + r.w,
                                                                       r.y + r.h], 6)))
    return {k: sorted(v) for k, v in got.items()}


def test_globox_reads_our_coco_yolo_and_voc(coco, tmp_path):
    from globox import AnnotationSet

    s = read_coco(coco)
    gc = AnnotationSet.from_coco(write_coco(s, tmp_path / 'coco.json'))
    assert globox_boxes(gc) == our_boxes(s)
    write_yolo(s, tmp_path / 'yolo')
    gy = AnnotationSet.from_yolo_v5(tmp_path / 'yolo' / 'labels' / 'unsplit',
                                    image_folder=tmp_path / 'yolo' / 'images' / 'unsplit', image_extension='.png')
    index = {str(i): c for i, c in enumerate(s.classes)}
    assert globox_boxes(gy, lambda b: index[b.label]) == our_boxes(s)
    write_voc(s, tmp_path / 'voc')
    gv = AnnotationSet.from_pascal_voc(tmp_path / 'voc' / 'Annotations')
    assert globox_boxes(gv) == our_boxes(s, offset=1.0)  # VOC: xmin = x + 1, xmax = x + w


# --- bad input ---------------------------------------------------------------------------------------------------

def edit(coco: Path, change) -> Path:
    d = json.loads(coco.read_text())
    change(d)
    coco.write_text(json.dumps(d))
    return coco


@pytest.mark.parametrize('change, message', [
    (lambda d: d['annotations'][0].update(id=0), 'annotations[0] has id 0'),
    (lambda d: d['annotations'][1].update(id=1), 'annotation id 1 is used twice'),
    (lambda d: d['annotations'][0].update(category_id=5), 'annotation 1 refers to category id 5'),
    (lambda d: d['annotations'][0].update(image_id=1), 'annotation 1 refers to image id 1'),
    (lambda d: d['annotations'][0].update(bbox=[1, 2, -3, 4]), 'negative width or height'),
    (lambda d: d['annotations'][0].update(bbox=[1, 2, float('nan'), 4]), 'non-finite bbox'),
    (lambda d: d['annotations'][0].update(bbox=[1, 2, float('inf'), 4]), 'non-finite bbox'),
    (lambda d: d['annotations'][0].update(bbox=[1, 2, 3]), 'a COCO bbox is [x, y, width, height]'),
    (lambda d: d['annotations'][0].update(segmentation=[[1, 2, 3, 4]]), 'annotation 1: a polygon needs 3 points'),
    (lambda d: d['annotations'][0].update(segmentation=[[1, 2, 3, 4, 5, 6, 7]]), 'a polygon needs 3 points'),
    (lambda d: d['categories'].append(dict(id=3, name='again')), 'category id 3 is used twice'),
    (lambda d: d['images'][1].update(id=100), 'image id 100 is listed twice'),
])
def test_bad_coco_names_file_object_and_fix(coco, change, message):
    with pytest.raises(DataError) as e:
        read_coco(edit(coco, change))
    assert message in str(e.value) and str(coco) in str(e.value)


def test_malformed_json_names_line(coco):
    coco.write_text('{"images": [\n  {"id": 1,}]}')
    with pytest.raises(DataError, match='line 2, column 12'):
        read_coco(coco)


def test_missing_iscrowd_and_area_follow_pycocotools_loadres(coco):
    "No `iscrowd` means 0 and no `area` means the mask area (pycocotools' rasterised polygon), else w * h."
    from pycocotools import mask as mu

    src = json.loads(coco.read_text())
    s = read_coco(edit(coco, lambda d: [a.pop(k, None) for a in d['annotations'] for k in ('iscrowd', 'area')]))
    assert s.objects.iscrowd.tolist() == [0] * len(s.objects)
    for a, area in zip(src['annotations'], s.objects.area):
        rle = mu.frPyObjects(a['segmentation'], H, W)
        assert area == pytest.approx(float(mu.area(mu.merge(rle) if isinstance(rle, list) else rle)))
    t = read_coco(edit(coco, lambda d: [a.pop('segmentation', None) for a in d['annotations']]))
    np.testing.assert_allclose(t.objects.area, t.objects.w * t.objects.h)


def test_zero_size_boxes_are_kept(coco):
    s = read_coco(edit(coco, lambda d: d['annotations'][0].update(bbox=[5, 5, 0, 3])))
    assert s.objects.loc[s.objects.object_id == 1, 'w'].item() == 0.0


def test_missing_images_are_skipped_not_fatal(coco):
    os.remove(coco.parent / 'im1.png')
    s = read_coco(coco)
    assert 'im1.png' not in set(s.df.path) and s.skipped.to_dict('records') == [dict(path='im1.png',
                                                                                     reason='file not found')]
    assert 'im1.png' not in set(s.objects.image_id)
    assert len(read_coco(coco, check_images=False)) == 6


def test_annotations_without_any_image_still_read(coco, tmp_path):
    "A COCO file alone (no images anywhere near it) is still a dataset: evaluation needs no pixels."
    alone = tmp_path / 'alone' / 'gt.json'
    alone.parent.mkdir()
    alone.write_text(coco.read_text())
    assert len(read_coco(alone)) == 6


def test_yolo_bad_lines_name_file_and_line(coco, tmp_path):
    y = write_yolo(read_coco(coco), tmp_path / 'yolo')
    label = tmp_path / 'yolo' / 'labels' / 'unsplit' / 'im2.txt'
    for text, message in [('0 0.5 0.5 0.1 0.1\n1 0.5 0.5 0.1\n', 'im2.txt line 2: `1 0.5 0.5 0.1` has 4 columns'),
                          ('7 0.5 0.5 0.1 0.1\n', 'has a class index outside 0..2'),
                          ('0 32 24 10 10\n', 'has a coordinate outside 0..1'),
                          ('0 0.5 0.5 0.1 0.1 0.9\n', 'looks like a prediction'),
                          ('0 0.1 0.1 0.2 0.2 0.3\n', 'has 6 columns'),
                          ('0 0.1 0.1 0.2 0.2 0.3 0.3 0.4\n', 'has 8 columns')]:
        label.write_text(text)
        with pytest.raises(DataError, match=None) as e:
            read_yolo(y)
        assert message in str(e.value), (text, str(e.value))


def test_yolo_segment_lines_give_box_and_polygon(coco, tmp_path):
    y = write_yolo(read_coco(coco), tmp_path / 'yolo')
    (tmp_path / 'yolo' / 'labels' / 'unsplit' / 'im0.txt').write_text('2 0.25 0.25 0.75 0.25 0.5 0.75\n')
    o = read_yolo(y).objects
    seg = o[o.image_id == 'images/unsplit/im0.png'].iloc[0]
    assert (seg.label, seg.x, seg.y, seg.w, seg.h) == ('car', 16.0, 12.0, 32.0, 24.0)
    assert json.loads(seg.segmentation) == [[16.0, 12.0, 48.0, 12.0, 32.0, 36.0]]


def test_voc_without_size_uses_the_image_header_else_fails(tmp_path):
    (tmp_path / 'a.xml').write_text('<annotation><filename>a.png</filename><object><name>cat</name><bndbox><xmin>1'
                                    '</xmin><ymin>1</ymin><xmax>4</xmax><ymax>4</ymax></bndbox></object></annotation>')
    with pytest.raises(DataError, match='a.xml has no <size> and its image a.png cannot tell'):
        read_voc(tmp_path)
    Image.new('RGB', (W, H)).save(tmp_path / 'a.png')
    assert read_voc(tmp_path).df[['width', 'height']].values.tolist() == [[W, H]]


def test_malformed_voc_xml_names_file(tmp_path):
    (tmp_path / 'bad.xml').write_text('<annotation><object><name>cat</name>')
    with pytest.raises(DataError, match='bad.xml is not valid XML'):
        read_voc(tmp_path)


# --- dispatch, saving, the text manifest ------------------------------------------------------------------------

def test_read_dataset_dispatches_detection_formats(coco, tmp_path):
    s = read_coco(coco)
    assert read_dataset(coco).task == 'detection'
    assert len(read_dataset(write_yolo(s, tmp_path / 'yolo')).objects) == len(s.objects)
    assert len(read_dataset(write_voc(s, tmp_path / 'voc')).objects) == len(s.objects)
    with pytest.raises(DataError, match='choose one of coco, voc, yolo'):
        convert_dataset(coco, 'csv', tmp_path / 'x')


def test_detection_samples_save_and_load(coco, tmp_path):
    s = read_coco(coco)
    t = load_samples_table(s.save(tmp_path / 'samples.parquet'))
    assert t.category_ids == s.category_ids and t.version == s.version
    pd.testing.assert_frame_equal(t.objects, s.objects, check_dtype=False)


def test_writers_link_images_and_refuse_a_used_folder(coco, tmp_path):
    s = read_coco(coco)
    write_yolo(s, tmp_path / 'yolo')
    linked = tmp_path / 'yolo' / 'images' / 'unsplit' / 'im0.png'
    assert os.stat(linked).st_ino == os.stat(coco.parent / 'im0.png').st_ino
    with pytest.raises(DataError, match='is not empty'):
        write_yolo(s, tmp_path / 'yolo')


def test_text_manifest_is_an_ocr_table(tmp_path):
    for i in range(3):
        Image.new('RGB', (W, H)).save(tmp_path / f'{i}.png')
    (tmp_path / 'ocr.csv').write_text('path,text,camera\n0.png,HELLO,a\n1.png,,b\n2.png,"4,2",a\n')
    s = read_dataset(tmp_path / 'ocr.csv')
    assert s.task == 'text' and s.df.text.tolist() == ['HELLO', '', '4,2'] and s.df.camera.tolist() == ['a', 'b', 'a']


def test_yolo_unreadable_image_is_skipped_with_reason(coco, tmp_path):
    y = write_yolo(read_coco(coco), tmp_path / 'yolo')
    bad = tmp_path / 'yolo' / 'images' / 'unsplit' / 'im3.png'
    bad.unlink()  # a hard link: replace it, do not write through it into the source image
    bad.write_bytes(b'not a png')
    s = read_yolo(y)
    assert s.skipped.to_dict('records') == [dict(path='images/unsplit/im3.png',
                                                 reason='not a readable image (UnidentifiedImageError)')]
    assert len(s) == 5 and 'images/unsplit/im3.png' not in set(s.objects.image_id)
