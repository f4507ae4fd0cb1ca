"Video frames into a dataset: counts for `every` and `fps`, frame content, timestamps, bad input, group splits."

import math
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cvbench.data.samples import DataError, Samples, load_samples_table
from cvbench.data.splits import group_split, split_samples
from cvbench.data.video import extract_frames

N, FPS, W, H = 30, 30.0, 64, 48


def write_video(path: Path, n: int = N, fps: float = FPS, fourcc: str = 'FFV1', seed: int | None = None) -> Path:
    "A `W`x`H` video whose frame k is a flat gray of level 8k (top-right corner) with k drawn on it."
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, (W, H))
    assert w.isOpened(), f'this OpenCV build cannot write {fourcc}'
    rng = np.random.default_rng(seed)
    for k in range(n):
        img = np.full((H, W, 3), 8 * k % 256, np.uint8)
        if seed is not None:  # a textured bottom half, so videos are not near duplicates of each other
            img[H // 2:] = rng.integers(0, 256, (H - H // 2, W, 3), dtype=np.uint8)
        cv2.putText(img, str(k), (2, H // 2 - 4), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1)
        w.write(img)
    w.release()
    return path


@pytest.fixture(scope='module')
def clip(tmp_path_factory) -> Path:
    "A lossless 30-frame, 30 fps clip."
    return write_video(tmp_path_factory.mktemp('video') / 'clip.avi')


@pytest.fixture(scope='module')
def mjpg(tmp_path_factory) -> Path:
    "The same clip as Motion JPEG: each frame is its own JPEG, so one frame can be damaged alone."
    return write_video(tmp_path_factory.mktemp('mjpg') / 'clip.avi', fourcc='MJPG')


def corner_level(path: Path) -> float:
    "Mean gray level of the top-right corner of an image (where the frame number is encoded as 8k)."
    return float(np.asarray(Image.open(path).convert('L'))[:8, -16:].mean())


def expected_fps_frames(n: int, video_fps: float, fps: float) -> list[int]:
    "Independent rule: for each tick k/fps seconds, the first frame at or after it (frame i starts at i/video_fps)."
    ticks = [math.ceil(k * video_fps / fps - 1e-9) for k in range(int(n * fps / video_fps) + 2)]
    return sorted({i for i in ticks if i < n})


@pytest.mark.parametrize('every', [1, 2, 4, 7, 29, 30, 100])
def test_every_counts(clip, tmp_path, every):
    s = extract_frames(clip, tmp_path, every=every, ext='png')
    assert s.df['frame'].tolist() == list(range(0, N, every))
    assert len(s) == math.ceil(N / every)


@pytest.mark.parametrize('fps', [1, 2.5, 7, 10, 15, 30, 60])
def test_fps_counts(clip, tmp_path, fps):
    s = extract_frames(clip, tmp_path, fps=fps, ext='png')
    assert s.df['frame'].tolist() == expected_fps_frames(N, FPS, fps)
    assert len(s) == min(N, math.ceil(N * fps / FPS))


def test_default_is_every_frame(clip, tmp_path):
    assert extract_frames(clip, tmp_path, ext='png').df['frame'].tolist() == list(range(N))


@pytest.mark.parametrize('ext, eps', [('png', 0), ('jpg', 2)])
def test_frame_k_on_disk_is_frame_k(clip, tmp_path, ext, eps):
    s = extract_frames(clip, tmp_path, every=3, ext=ext)
    for path, k in zip(s.paths(), s.df['frame']):
        assert path.name == f'{k:06d}.{ext}' and path.parent.name == 'clip'
        assert abs(corner_level(path) - 8 * k) <= eps


def test_metadata_columns_and_timestamps(clip, tmp_path):
    s = extract_frames(clip, tmp_path, fps=10)
    assert s.task == 'detection' and len(s.objects) == 0 and s.classes == []
    assert list(s.df.columns) == ['image_id', 'path', 'split', 'width', 'height', 'video', 'frame', 'timestamp']
    assert (s.df['width'] == W).all() and (s.df['height'] == H).all() and (s.df['split'] == '').all()
    assert (s.df['video'] == 'clip').all()
    np.testing.assert_allclose(s.df['timestamp'], s.df['frame'] / FPS)
    cap, clock = cv2.VideoCapture(str(clip)), {}  # the container's own clock agrees with frame / fps
    for i in range(N):
        assert cap.grab()
        clock[i] = cap.get(cv2.CAP_PROP_POS_MSEC) / 1000
    np.testing.assert_allclose(s.df['timestamp'], s.df['frame'].map(clock), atol=1e-6)
    assert s.df['image_id'].tolist() == [f'clip/{k:06d}.jpg' for k in range(0, N, 3)]


def test_table_saved_and_reloads(clip, tmp_path):
    s = extract_frames(clip, tmp_path / 'out', every=5)
    t = load_samples_table(tmp_path / 'out' / 'samples.parquet')
    pd.testing.assert_frame_equal(t.df, s.df)
    assert (t.task, t.root, t.version) == ('detection', (tmp_path / 'out').absolute(), s.version)
    assert all(p.is_file() for p in t.paths())
    assert not list((tmp_path / 'out').rglob('*.tmp'))  # atomic writes leave no temporary files


def test_deterministic(clip, tmp_path):
    a = extract_frames(clip, tmp_path / 'a', fps=7)
    b = extract_frames(clip, tmp_path / 'b', fps=7)
    pd.testing.assert_frame_equal(a.df, b.df)
    assert [p.read_bytes() for p in a.paths()] == [p.read_bytes() for p in b.paths()]
    assert a.version == b.version


def test_label_gives_classification(clip, tmp_path):
    s = extract_frames(clip, tmp_path, every=10, label='belt')
    assert (s.task, s.classes, s.df['label'].tolist()) == ('classification', ['belt'], ['belt'] * 3)


@pytest.mark.parametrize('kw, msg', [
    (dict(every=2, fps=5), 'not both'),
    (dict(every=0), '`every` must be'),
    (dict(every=-2), '`every` must be'),
    (dict(every=2.5), '`every` must be'),
    (dict(fps=0), '`fps` must be'),
    (dict(fps=-1), '`fps` must be'),
    (dict(fps=float('nan')), '`fps` must be'),
    (dict(ext='gif'), 'not supported'),
])
def test_bad_arguments(clip, tmp_path, kw, msg):
    with pytest.raises(DataError, match=msg):
        extract_frames(clip, tmp_path, **kw)
    assert not (tmp_path / 'samples.parquet').exists()


def test_missing_and_not_a_video(tmp_path):
    with pytest.raises(DataError, match=r'missing\.mp4 does not exist'):
        extract_frames(tmp_path / 'missing.mp4', tmp_path / 'out')
    (tmp_path / 'notes.avi').write_text('these are notes, not a video')
    with pytest.raises(DataError, match=r'cannot open .*notes\.avi as a video'):
        extract_frames(tmp_path / 'notes.avi', tmp_path / 'out')


def test_video_without_frames(tmp_path):
    empty = write_video(tmp_path / 'empty.avi', n=0, fourcc='MJPG')
    with pytest.raises(DataError, match=r'no frame of .*empty\.avi.*has no frames'):
        extract_frames(empty, tmp_path / 'out')


@pytest.mark.parametrize('bad_fps', [0.0, float('nan')])
def test_container_without_frame_rate(clip, tmp_path, monkeypatch, bad_fps):
    real = cv2.VideoCapture

    class NoRate:  # a proxy, not a subclass: subclasses of OpenCV's types crash when garbage-collected
        def __init__(self, *args):
            self.cap = real(*args)

        def get(self, prop):
            return bad_fps if prop == cv2.CAP_PROP_FPS else self.cap.get(prop)

        def __getattr__(self, name):
            return getattr(self.cap, name)

    monkeypatch.setattr(cv2, 'VideoCapture', NoRate)
    with pytest.raises(DataError, match=r'clip\.avi reports a frame rate of (0\.0|nan).*-r 30'):
        extract_frames(clip, tmp_path / 'out', every=2)


def damage_frame(video: Path, k: int, out: Path) -> Path:
    "A copy of the Motion JPEG `video` with the JPEG data of frame `k` zeroed."
    b = bytearray(video.read_bytes())
    starts = [i for i in range(len(b) - 2) if b[i:i + 3] == b'\xff\xd8\xff']  # JPEG start-of-image markers
    assert len(starts) == N
    b[starts[k]:starts[k] + 300] = bytes(300)
    out.write_bytes(bytes(b))
    return out


def test_undecodable_frame_is_skipped_and_the_rest_goes_on(mjpg, tmp_path):
    bad = damage_frame(mjpg, 12, tmp_path / 'damaged.avi')
    s = extract_frames(bad, tmp_path / 'out', every=4)
    assert s.df['frame'].tolist() == [0, 4, 8, 16, 20, 24, 28]
    assert s.skipped['path'].tolist() == ['damaged/000012.jpg']
    assert 'frame 12 of damaged.avi could not be decoded' in s.skipped['reason'][0]
    for path, k in zip(s.paths(), s.df['frame']):  # frames after the damage keep their own index
        assert abs(corner_level(path) - 8 * k) <= 3
    t = load_samples_table(tmp_path / 'out' / 'samples.parquet')
    assert t.skipped['path'].tolist() == ['damaged/000012.jpg']


def test_truncated_file_is_one_skipped_row(mjpg, tmp_path):
    cut = tmp_path / 'cut.avi'
    cut.write_bytes(mjpg.read_bytes()[: mjpg.stat().st_size // 2])
    s = extract_frames(cut, tmp_path / 'out', every=2)
    good = s.df['frame'].tolist()
    assert good == list(range(0, good[-1] + 1, 2)) and 3 <= len(good) < 15
    assert s.skipped['path'].tolist() == [f'cut/{good[-1] + 2:06d}.jpg']
    assert f'frames {good[-1] + 2} to 29 of cut.avi (30 reported)' in s.skipped['reason'][0]


class Overstated:
    "A `cv2.VideoCapture` proxy whose container claims 1000 frames (the file has 30)."

    real = cv2.VideoCapture

    def __init__(self, *args):
        self.cap = self.real(*args)

    def get(self, prop):
        return 1000.0 if prop == cv2.CAP_PROP_FRAME_COUNT else self.cap.get(prop)

    def __getattr__(self, name):
        return getattr(self.cap, name)


def test_overstated_frame_count_ends_after_failures(clip, tmp_path, monkeypatch):
    monkeypatch.setattr(cv2, 'VideoCapture', Overstated)
    s = extract_frames(clip, tmp_path / 'out', every=3)
    assert s.df['frame'].tolist() == list(range(0, N, 3))
    assert s.skipped['path'].tolist() == ['clip/000030.jpg']  # one row, after MAX_FAILURES failed grabs
    assert 'frames 30 to 999 of clip.avi (1000 reported)' in s.skipped['reason'][0]


def test_folder_of_videos_and_group_split(tmp_path):
    folder = tmp_path / 'videos'
    folder.mkdir()
    sizes = {f'cam{v}': 10 + v for v in range(10)}
    for name, n in sizes.items():
        write_video(folder / f'{name}.avi', n=n, fourcc='MJPG', seed=len(name) + n)
    (folder / 'readme.txt').write_text('not a video, ignored')
    s = extract_frames(folder, tmp_path / 'frames', every=2)
    assert s.df.groupby('video').size().to_dict() == {k: math.ceil(n / 2) for k, n in sizes.items()}
    assert s.name == 'videos'
    for seed in range(3):
        sp = group_split(s, 'video', valid_pct=0.2, test_pct=0.2, seed=seed)
        assert sp.df.groupby('video')['split'].nunique().max() == 1  # no video straddles two splits
        assert set(sp.df['split']) == {'train', 'valid', 'test'}
        pd.testing.assert_frame_equal(sp.df.drop(columns='split'), s.df.drop(columns='split'))


def test_data_split_keeps_videos_whole(tmp_path):
    "The library call behind `cvbench data split FRAMES/samples.parquet --group video` (near-duplicate aware)."
    from cvbench.runs import data_split

    folder = tmp_path / 'videos'
    folder.mkdir()
    for v in range(6):
        write_video(folder / f'v{v}.avi', n=12, fourcc='MJPG', seed=v)
    extract_frames(folder, tmp_path / 'frames', every=3)
    sp = data_split(tmp_path / 'frames' / 'samples.parquet', tmp_path / 'split.parquet', group='video')
    assert sp.df.groupby('video')['split'].nunique().max() == 1
    assert load_samples_table(tmp_path / 'split.parquet').split_counts() == sp.split_counts()


def test_folder_errors(tmp_path, clip):
    (tmp_path / 'empty').mkdir()
    with pytest.raises(DataError, match='holds no video file'):
        extract_frames(tmp_path / 'empty', tmp_path / 'out')
    twins = tmp_path / 'twins'
    twins.mkdir()
    for name in ('a.avi', 'a.mp4'):
        (twins / name).write_bytes(clip.read_bytes())
    with pytest.raises(DataError, match='share the name `a`'):
        extract_frames(twins, tmp_path / 'out')
    broken = tmp_path / 'broken'
    broken.mkdir()
    for name in ('x.mp4', 'y.avi'):
        (broken / name).write_text('no video')
    with pytest.raises(DataError, match=r'no frame of .*broken.*cannot open'):
        extract_frames(broken, tmp_path / 'out')


def test_splits_of_a_detection_table_keep_objects_and_category_ids():
    "Detection tables have no `label`: split by group only (no stratification), objects and category ids kept."
    ids = [f'v{i % 8}/{i:06d}.jpg' for i in range(80)]
    df = pd.DataFrame(dict(image_id=ids, path=ids, split='', width=W, height=H, video=[i[:2] for i in ids]))
    objects = pd.DataFrame(dict(image_id=ids[:4], object_id=[7, 8, 9, 10], label=['car', 'car', 'bus', 'car'],
                                x=1.0, y=2.0, w=3.0, h=4.0, iscrowd=0, area=12.0, segmentation=None))
    det = Samples(df, '.', 'detection', objects=objects, category_ids={'bus': 6, 'car': 3})
    for sp in (group_split(det, 'video', valid_pct=0.25, seed=4), split_samples(det, 0.25, seed=4)):
        assert sp.split_counts() == {'train': 60, 'valid': 20}
        pd.testing.assert_frame_equal(sp.objects, det.objects)
        assert sp.category_ids == {'bus': 6, 'car': 3} and sp.classes == ['bus', 'car']
    assert group_split(det, 'video', valid_pct=0.25).df.groupby('video')['split'].nunique().max() == 1
    with pytest.raises(DataError, match='group column `camera` is not in the samples table'):
        group_split(det, 'camera')
