"""End to end through `cvbench.cli.main`: evaluate any detector's COCO results (checked against pycocotools), an OCR
model's CSV, convert detection formats, and sample video frames into a dataset."""

import contextlib, io, json, math
from pathlib import Path
import numpy as np, pandas as pd
import pytest
from PIL import Image
from conftest import run_cli

STAT_NAMES = ['AP', 'AP50', 'AP75', 'AP_small', 'AP_medium', 'AP_large', 'AR1', 'AR10', 'AR100', 'AR_small',
              'AR_medium', 'AR_large']


def random_coco(folder: Path, n_images: int = 16, seed: int = 0) -> tuple[Path, Path]:
    "A COCO dataset (tiny PNGs, category ids 2, 5, 9, crowd boxes, an image without objects) and a noisy results file."
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    cats = [dict(id=2, name='car'), dict(id=5, name='person'), dict(id=9, name='sign')]
    images, anns, res = [], [], []
    for i in range(1, n_images + 1):
        w, h = int(rng.integers(80, 200)), int(rng.integers(60, 160))
        Image.new('RGB', (w, h), (i * 9 % 256, 80, 120)).save(folder / f'im{i}.png')
        images.append(dict(id=i, file_name=f'im{i}.png', width=w, height=h))
        for _ in range(int(rng.integers(0, 6)) if i > 1 else 0):  # image 1 has no objects
            bw, bh = rng.uniform(4, w / 2), rng.uniform(4, h / 2)
            x, y = rng.uniform(0, w - bw), rng.uniform(0, h - bh)
            cat = int(rng.choice([2, 5, 9]))
            anns.append(dict(id=len(anns) + 1, image_id=i, category_id=cat, bbox=[x, y, bw, bh], area=bw * bh,
                             iscrowd=int(rng.random() < 0.1)))
            if rng.random() < 0.8:  # found, a little off, sometimes with the wrong class
                jit = rng.normal(0, 0.1, 4) * [bw, bh, bw, bh]
                c = cat if rng.random() < 0.85 else int(rng.choice([2, 5, 9]))
                res.append(dict(image_id=i, category_id=c, bbox=list(np.array([x, y, bw, bh]) + jit),
                                score=round(float(rng.uniform(0.3, 1)), 2)))
        for _ in range(int(rng.integers(0, 3))):  # false positives
            res.append(dict(image_id=i, category_id=int(rng.choice([2, 5, 9])),
                            bbox=[float(rng.uniform(0, w - 10)), float(rng.uniform(0, h - 10)), 8.0, 8.0],
                            score=round(float(rng.uniform(0, 0.6)), 2)))
    gt, dt = folder / 'instances.json', folder / 'results.json'
    gt.write_text(json.dumps(dict(images=images, annotations=anns, categories=cats)))
    dt.write_text(json.dumps(res))
    return gt, dt


def pycocotools_stats(gt: Path, dt: Path) -> list[float]:
    "The 12 numbers of pycocotools' `COCOeval.stats`, computed by pycocotools itself."
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        g = COCO(str(gt))
        e = COCOeval(g, g.loadRes(str(dt)), 'bbox')
        e.evaluate()
        e.accumulate()
        e.summarize()
    return [float(v) for v in e.stats]


@pytest.fixture(scope='module')
def coco(tmp_path_factory) -> tuple[Path, Path]:
    return random_coco(tmp_path_factory.mktemp('coco'))


@pytest.fixture(scope='module')
def evaluated(coco, tmp_path_factory):
    "`cvbench eval instances.json --predictions results.json --out DIR`, run once for the module."
    out = tmp_path_factory.mktemp('eval') / 'eval'
    rc, stdout, err = run_cli('eval', coco[0], '--predictions', coco[1], '--out', out)
    assert rc == 0, err
    return out, stdout


def test_eval_predictions_equals_pycocotools(coco, evaluated):
    out, stdout = evaluated
    metrics = json.loads((out / 'metrics.json').read_text())
    ours, ref = metrics['coco_stats'], pycocotools_stats(*coco)
    assert len(ours) == 12
    assert ours == ref, (ours, ref)  # bit-exact, not approximately
    assert 0.05 < ref[0] < 0.95  # a case where AP could be wrong: neither perfect nor nothing found
    lines = dict(line.split(': ', 1) for line in stdout.splitlines())
    for name, v in zip(STAT_NAMES, ref):
        assert math.isclose(float(lines[name]), v, abs_tol=5e-5), name  # the 12 stats are printed, to 4 decimals
    assert Path(lines['metrics']) == out / 'metrics.json' and Path(lines['ledger']).is_file()


def test_eval_folder_holds_a_complete_evaluation(evaluated, coco):
    from cvbench.runs import open_evaluation

    out, _ = evaluated
    ledger, meta, samples = open_evaluation(out)
    assert meta['task'] == 'detection' and meta['classes'] == ['car', 'person', 'sign']
    assert len(ledger) == len(json.loads(coco[1].read_text()))
    assert samples.category_ids == {'car': 2, 'person': 5, 'sign': 9}
    status = json.loads((out / 'run.json').read_text())
    assert status['status'] == 'evaluated' and status['task'] == 'detection'


def test_a_ledger_evaluates_like_the_results_json(coco, evaluated, tmp_path):
    "The same detections as a cvbench ledger parquet give the same 12 numbers."
    from cvbench.data.detection import read_coco
    from cvbench.evaluate.ledger import read_coco_results, save_ledger

    samples = read_coco(coco[0])
    save_ledger(read_coco_results(coco[1], samples), tmp_path / 'dets.parquet', samples.classes, 'detection')
    rc, _, err = run_cli('eval', coco[0], '--predictions', tmp_path / 'dets.parquet', '--out', tmp_path / 'e')
    assert rc == 0, err
    again = json.loads((tmp_path / 'e' / 'metrics.json').read_text())['coco_stats']
    assert again == json.loads((evaluated[0] / 'metrics.json').read_text())['coco_stats']


def one_error_line(result: tuple, *parts: str):
    "Exit status 2 and one line on stderr that names what was wrong (`result`: `run_cli`'s)."
    rc, _, err = result
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('cvbench: error: '), err
    for p in parts:
        assert p in lines[0], (p, lines[0])


def test_bad_inputs_exit_2_with_one_line(coco, tmp_path):
    gt, dt = coco
    one_error_line(run_cli('eval', gt, '--predictions', tmp_path / 'none.json', '--out', tmp_path / 'o'),
                   'none.json', 'do not exist')
    (tmp_path / 'stray.json').write_text(json.dumps([dict(image_id=999, category_id=2, bbox=[1, 1, 5, 5],
                                                          score=0.5)]))
    one_error_line(run_cli('eval', gt, '--predictions', tmp_path / 'stray.json', '--out', tmp_path / 'o'), '999')
    (tmp_path / 'cat.json').write_text(json.dumps([dict(image_id=1, category_id=4, bbox=[1, 1, 5, 5], score=0.5)]))
    one_error_line(run_cli('eval', gt, '--predictions', tmp_path / 'cat.json', '--out', tmp_path / 'o'), 'category')
    (tmp_path / 'nan.json').write_text('[{"image_id": 2, "category_id": 2, "bbox": [1, 1, 5, 5], "score": NaN}]')
    one_error_line(run_cli('eval', gt, '--predictions', tmp_path / 'nan.json', '--out', tmp_path / 'o'), 'NaN')
    one_error_line(run_cli('eval', gt, '--predictions', dt), '--out DIR')
    one_error_line(run_cli('eval', tmp_path / 'nope.json', '--predictions', dt, '--out', tmp_path / 'o'), 'nope.json')
    one_error_line(run_cli('eval', gt, '--predictions', dt, '--data', gt, '--out', tmp_path / 'o'), '--data')
    assert not (tmp_path / 'o').exists()  # nothing written for a refused input
    one_error_line(run_cli('data', 'convert', tmp_path / 'none.json', '--to', 'yolo', '--out', tmp_path / 'y'),
                   'none.json')
    one_error_line(run_cli('data', 'frames', tmp_path / 'none.mp4', '--fps', '2', '--out', tmp_path / 'f'), 'none.mp4')
    rc, out, err = run_cli('data', 'convert', gt, '--to', 'pascal', '--out', tmp_path / 'x')  # argparse's choices
    assert rc == 2 and 'pascal' in err


def boxes_by_image(gt: Path) -> dict:
    "file name -> sorted (category name, x, y, w, h) of a COCO file, read with pycocotools."
    from pycocotools.coco import COCO

    with contextlib.redirect_stdout(io.StringIO()):
        c = COCO(str(gt))
    names = {k: v['name'] for k, v in c.cats.items()}
    out = {}
    for img in c.imgs.values():
        anns = c.loadAnns(c.getAnnIds(imgIds=[img['id']]))
        out[Path(img['file_name']).name] = sorted((names[a['category_id']], *a['bbox']) for a in anns)
    return out


def test_data_convert_round_trip(coco, tmp_path):
    gt, _ = coco
    rc, stdout, err = run_cli('data', 'convert', gt, '--to', 'yolo', '--out', tmp_path / 'yolo')
    assert rc == 0, err
    yolo = Path(stdout.strip().split(': ', 1)[1])
    rc, stdout, err = run_cli('data', 'convert', yolo, '--to', 'coco', '--out', tmp_path / 'coco')
    assert rc == 0, err
    back = Path(stdout.strip().split(': ', 1)[1])
    a, b = boxes_by_image(gt), boxes_by_image(back)
    assert a.keys() == b.keys()
    sizes = {i['file_name']: (i['width'], i['height']) for i in json.loads(gt.read_text())['images']}
    for name, boxes in a.items():
        assert [r[0] for r in boxes] == [r[0] for r in b[name]], name
        scale = np.array(sizes[name] * 2, float)
        got = np.array([r[1:] for r in b[name]], float).reshape(-1, 4)
        want = np.array([r[1:] for r in boxes], float).reshape(-1, 4)
        assert np.all(np.abs(got - want) <= 1e-6 * scale), name  # YOLO keeps boxes to 1e-6 of the image size


def write_video(path: Path, n: int, size=(64, 48)):
    "An MJPG video of `n` frames whose brightness is 10 * frame index."
    import cv2

    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*'MJPG'), 10.0, size)
    assert w.isOpened()
    for i in range(n):
        w.write(np.full((size[1], size[0], 3), 10 * i, np.uint8))
    w.release()


def test_data_frames_and_a_split_by_video(tmp_path):
    from cvbench.data.samples import load_samples_table

    (tmp_path / 'videos').mkdir()
    write_video(tmp_path / 'videos' / 'one.avi', 12)
    rc, stdout, err = run_cli('data', 'frames', tmp_path / 'videos' / 'one.avi', '--every', '3', '--out',
                              tmp_path / 'f1')
    assert rc == 0, err
    s = load_samples_table(tmp_path / 'f1' / 'samples.parquet')
    assert sorted(s.df['frame']) == [0, 3, 6, 9] and '4 frames of 1 video(s)' in stdout
    np.testing.assert_allclose(sorted(s.df['timestamp']), [0.0, 0.3, 0.6, 0.9], atol=1e-6)
    means = [np.asarray(Image.open(p)).mean() for p in s.root / s.df.sort_values('frame')['path']]
    np.testing.assert_allclose(means, [0, 30, 60, 90], atol=4)  # frame k on disk is frame k of the video
    for i in range(2, 7):
        write_video(tmp_path / 'videos' / f'v{i}.avi', 6)
    rc, _, err = run_cli('data', 'frames', tmp_path / 'videos', '--every', '2', '--out', tmp_path / 'f')
    assert rc == 0, err
    rc, _, err = run_cli('data', 'split', tmp_path / 'f' / 'samples.parquet', '--group', 'video', '--no-dedup',
                         '--out', tmp_path / 'split.parquet')
    assert rc == 0, err
    df = load_samples_table(tmp_path / 'split.parquet').df
    assert (df.groupby('video')['split'].nunique() == 1).all()  # no video straddles two splits
    assert set(df['split']) >= {'train', 'valid'}
    one_error_line(run_cli('data', 'frames', tmp_path / 'videos' / 'one.avi', '--every', '0', '--out',
                            tmp_path / 'f0'), 'every')


def test_text_eval_on_a_csv(tmp_path):
    from rapidfuzz.distance import Levenshtein

    refs = ['STOP', 'ONE WAY', 'EXIT 12', 'NO PARKING', 'KEEP LEFT']
    preds = ['STOP', 'ONE WA', 'EXIT 17', 'NO PARKNG', '']
    for i in range(len(refs)):
        Image.new('RGB', (32, 16), (i * 40, 0, 0)).save(tmp_path / f's{i}.png')
    pd.DataFrame(dict(path=[f's{i}.png' for i in range(5)], text=refs)).to_csv(tmp_path / 'signs.csv', index=False)
    pd.DataFrame(dict(image_id=[f's{i}.png' for i in range(5)], pred_text=preds)).to_csv(tmp_path / 'ocr.csv',
                                                                                        index=False)
    rc, stdout, err = run_cli('eval', tmp_path / 'signs.csv', '--predictions', tmp_path / 'ocr.csv', '--out',
                              tmp_path / 'e')
    assert rc == 0, err
    cer = sum(Levenshtein.distance(r, p) for r, p in zip(refs, preds)) / sum(map(len, refs))
    metrics = json.loads((tmp_path / 'e' / 'metrics.json').read_text())
    assert math.isclose(metrics['cer'], cer, rel_tol=1e-12)
    lines = dict(line.split(': ', 1) for line in stdout.splitlines())
    assert math.isclose(float(lines['cer']), cer, abs_tol=5e-5) and 'wer' in lines
    pd.DataFrame(dict(image_id=['s0.png'], pred_text=['STOP'])).to_csv(tmp_path / 'few.csv', index=False)
    one_error_line(run_cli('eval', tmp_path / 'signs.csv', '--predictions', tmp_path / 'few.csv', '--out',
                            tmp_path / 'e2'), 'lacks predictions for 4')


def test_compare_two_detectors_with_a_gate(coco, evaluated, tmp_path):
    "A detector that lost half its detections fails an AP gate; the same detector against itself passes."
    worse = json.loads(coco[1].read_text())[::2]
    (tmp_path / 'worse.json').write_text(json.dumps(worse))
    rc, _, err = run_cli('eval', coco[0], '--predictions', tmp_path / 'worse.json', '--out', tmp_path / 'worse')
    assert rc == 0, err
    (tmp_path / 'gate.yaml').write_text('metrics:\n  ap50: {max_drop: 0.01}\n')
    base = evaluated[0]
    rc, stdout, err = run_cli('compare', base, tmp_path / 'worse', '--gate', tmp_path / 'gate.yaml', '--resamples',
                              '200', '--out', tmp_path / 'cmp')
    assert rc == 1, err + stdout
    assert 'ap50' in stdout and (tmp_path / 'cmp' / 'comparison.json').is_file()
    rc, _, err = run_cli('compare', base, base, '--gate', tmp_path / 'gate.yaml', '--resamples', '200', '--out',
                         tmp_path / 'same')
    assert rc == 0, err
    (tmp_path / 'clf_gate.yaml').write_text('metrics:\n  accuracy: {max_drop: 0.01}\n')
    one_error_line(run_cli('compare', base, base, '--gate', tmp_path / 'clf_gate.yaml', '--out', tmp_path / 'x'),
                   'accuracy')


def test_training_a_detector_says_what_to_do_instead(tmp_path):
    one_error_line(run_cli('run', 'task=detection', f'runs_dir={tmp_path}/runs'), 'issue 15', '--predictions RESULTS')
    one_error_line(run_cli('train', 'task=text', f'runs_dir={tmp_path}/runs'), 'issue 15')
    assert not (tmp_path / 'runs').exists()  # refused before a run folder exists


def test_classification_run_on_detection_data_names_the_task(tmp_path):
    "A classification run (the default task) on a COCO dataset: one clear line, not a KeyError on `label`."
    gt, _ = random_coco(tmp_path / 'coco', n_images=6, seed=2)
    one_error_line(run_cli('run', f'data.source={gt}', f'runs_dir={tmp_path}/runs', 'track.wandb=false'),
                   'is for task `detection`, not `classification`', 'set `task: detection`')


def test_data_check_on_a_detection_dataset_keeps_the_objects(tmp_path):
    "`data check` scans a COCO dataset; excluding images keeps the other images' objects and category ids."
    from cvbench.data.detection import read_coco
    from cvbench.runs import exclude_issues

    gt, _ = random_coco(tmp_path / 'coco', n_images=6, seed=1)
    rc, stdout, err = run_cli('data', 'check', gt, '--out', tmp_path / 'check', '--workers', '1', '--no-label-issues')
    assert rc == 0, err
    issues = pd.read_csv(tmp_path / 'check' / 'issues.csv', dtype={'image_id': str})
    assert '6 images scanned' in stdout and 'no_annotations' in set(issues.issue)  # image 1 has no objects
    s = read_coco(gt)
    drop = s.df['image_id'].iloc[[1, 2]]
    planted = pd.DataFrame(dict(image_id=drop, issue='exact_duplicate'))
    clean, counts = exclude_issues(s, planted, ['exact_duplicate'])
    kept = s.objects[~s.objects['image_id'].isin(drop)]
    assert len(clean) == 4 and counts == {'exact_duplicate': 2}
    assert sorted(clean.objects['object_id']) == sorted(kept['object_id']) and len(kept) < len(s.objects)
    assert clean.category_ids == {'car': 2, 'person': 5, 'sign': 9}


def test_images_missing_on_disk_do_not_change_ap(tmp_path):
    "Evaluation reads no pixel: a COCO dataset whose image files are partly absent gives pycocotools' numbers."
    gt, dt = random_coco(tmp_path / 'coco', n_images=8, seed=2)
    for i in (2, 5):
        (tmp_path / 'coco' / f'im{i}.png').unlink()
    rc, _, err = run_cli('eval', gt, '--predictions', dt, '--out', tmp_path / 'e')
    assert rc == 0, err
    assert json.loads((tmp_path / 'e' / 'metrics.json').read_text())['coco_stats'] == pycocotools_stats(gt, dt)


def test_synthetic_scenes_through_coco_files(tmp_path):
    "Scenes written as COCO files, a simulated detector's results: pycocotools' numbers, and slices by lighting."
    from cvbench.data.datasets import synthetic_scenes, simulate_detections
    from cvbench.data.detection import write_coco
    from cvbench.evaluate.ledger import write_coco_results, save_ledger

    s = synthetic_scenes(tmp_path / 'scenes', n=20, seed=3)
    dets = simulate_detections(s, seed=3)
    gt, dt = write_coco(s, tmp_path / 'scenes' / 'coco.json'), write_coco_results(dets, s, tmp_path / 'dets.json')
    rc, _, err = run_cli('eval', gt, '--predictions', dt, '--out', tmp_path / 'e')
    assert rc == 0, err
    metrics = json.loads((tmp_path / 'e' / 'metrics.json').read_text())
    assert metrics['coco_stats'] == pycocotools_stats(gt, dt)
    save_ledger(dets, tmp_path / 'dets.parquet', s.classes, 'detection')  # the samples table and a ledger: same AP
    rc, _, err = run_cli('eval', tmp_path / 'scenes' / 'samples.parquet', '--predictions', tmp_path / 'dets.parquet',
                         '--out', tmp_path / 'e2')
    assert rc == 0, err
    again = json.loads((tmp_path / 'e2' / 'metrics.json').read_text())
    assert again['coco_stats'] == metrics['coco_stats']
    assert 'lighting' in {r['column'] for r in again['slices']}  # metadata columns of the scenes become slices
