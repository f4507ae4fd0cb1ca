"""Can a model package be trusted? Its preprocessing is fully written down (an outside implementation that reads only
`preprocess.json` matches the predictor), every broken package is refused with a clear message, and an export killed
by `kill -9` at any moment never leaves a half-written package under the final name."""

import json, os, subprocess, sys, textwrap
from pathlib import Path
import numpy as np, pandas as pd, pytest
from PIL import Image, ImageOps

from cvbench.core import CvbenchError, RunDir
from cvbench.data.samples import Samples
from cvbench.deploy.export import export_package, ExportParityError
from cvbench.deploy.package import PackageDir, PackageError, read_package
from cvbench.deploy.predictor import Predictor
from cvbench.models import create_model, save_checkpoint
from cvbench.transforms import PreprocessSpec

CLASSES = ['cat', 'dog', 'owl']
KILL_TRIALS = int(os.environ.get('CVBENCH_KILL_TRIALS', 20))  # kill -9 trials; raise for a longer soak


def make_run(root: Path, size: int = 16, resize: str = 'squash') -> RunDir:
    "A run directory with untrained weights and a few odd-sized photos-like images: all `export_package` needs."
    rng = np.random.default_rng(0)
    imgs = root / 'images'
    imgs.mkdir(parents=True)
    rows = []
    for i in range(9):
        h, w = 20 + 3 * i, 31 - 2 * i  # every aspect differs, so resizing matters
        yy, xx = np.mgrid[:h, :w]
        a = np.stack([xx * 255 // w, yy * 255 // h, rng.integers(0, 255, (h, w))], -1).astype(np.uint8)
        Image.fromarray(a).save(imgs / f'{i}.png')
        rows.append(dict(image_id=str(i), path=f'{i}.png', split='valid' if i % 2 else 'train', label=CLASSES[i % 3]))
    rd = RunDir(root / 'run')
    rd.path.mkdir()
    Samples(pd.DataFrame(rows), imgs, classes=CLASSES).save(rd.samples)
    import torch

    torch.manual_seed(0)
    spec = PreprocessSpec(size=size, resize=resize)
    save_checkpoint(create_model('resnet10t', len(CLASSES)), rd.model, 'resnet10t', CLASSES, preprocess=spec.to_dict())
    return rd


@pytest.fixture(scope='module')
def package(tmp_path_factory) -> Path:
    "One exported package (ONNX + TorchScript) of an untrained resnet10t, shared by the read-only tests."
    root = tmp_path_factory.mktemp('trust')
    return export_package(make_run(root), root / 'package', n_golden=4)


# -- 1. the package describes its preprocessing: an outside implementation from preprocess.json alone --------------


def outside_preprocess(path: Path, spec: dict) -> np.ndarray:
    "What a serving team writes from `preprocess.json` alone: plain Pillow and NumPy, no cvbench code."
    im, x = None, None
    for s in spec['steps']:
        op = s['op']
        if op == 'decode':
            im = Image.open(path)
            assert im.width * im.height <= s['max_pixels']
            im.load()
        elif op == 'exif_orientation':
            im = ImageOps.exif_transpose(im)
        elif op == 'bit_depth' and im.mode in s['modes']:
            a = np.asarray(im, dtype=np.float64)
            rule = next(r for r in s['rules'] if im.mode in r['modes'] and a.max() <= r.get('max_at_most', np.inf)
                        and a.max() > r.get('max_above', -np.inf))
            im = Image.fromarray(np.clip(a / rule['full_scale'] * 255 + 0.5, 0, 255).astype(np.uint8))
        elif op == 'palette' and im.mode in s['modes']:
            im = im.convert('RGBA' if 'transparency' in im.info else 'RGB')
        elif op == 'alpha' and im.mode in s['modes']:
            im = Image.alpha_composite(Image.new('RGBA', im.size, (*s['background'], 255)), im.convert('RGBA'))
        elif op == 'to_rgb':
            im = im.convert('RGB')
        elif op == 'resize':
            (h, w), f = s['size_hw'], getattr(Image.Resampling, s['filter'].upper())
            if s['method'] == 'squash':
                im = im.resize((w, h), f)
            else:
                k = (max if s['method'] == 'crop' else min)(w / im.width, h / im.height)
                im = im.resize((max(1, round(im.width * k)), max(1, round(im.height * k))), f)
        elif op == 'center_crop':
            (h, w), (l, t) = s['size_hw'], ((im.width - s['size_hw'][1]) // 2, (im.height - s['size_hw'][0]) // 2)
            im = im.crop((l, t, l + w, t + h))
        elif op == 'pad':
            (h, w), canvas = s['size_hw'], Image.new('RGB', tuple(s['size_hw'][::-1]), tuple(s['fill']))
            canvas.paste(im, ((w - im.width) // 2, (h - im.height) // 2))
            im = canvas
        elif op == 'to_array':
            assert s['channel_order'] == 'RGB' and s['layout'] == 'HWC'
            x = np.asarray(im, dtype=np.uint8)
        elif op == 'scale':
            x = x.astype(s['dtype']) * np.float32(s['multiply_by'])
        elif op == 'normalize':
            x = (x - np.float32(s['mean'])) / np.float32(s['std'])
        elif op == 'layout':
            assert s['layout'] == 'NCHW'
            x = x.transpose(2, 0, 1)
        elif op not in ('bit_depth', 'palette', 'alpha'):
            raise AssertionError(f'preprocess.json has a step this implementation does not know: {op}')
    return x


def test_outside_preprocessing_matches_predictor_on_every_golden_image(package):
    spec = json.loads(PackageDir(package).preprocess.read_text())
    p = Predictor.load(package, 'onnx')
    gold = sorted(p for p in PackageDir(package).golden.iterdir() if p.suffix in ('.png', '.jpg'))
    assert {'odd_exif_rotated.jpg', 'odd_grayscale.png', 'odd_rgba.png', 'odd_16bit.png', 'odd_size.png'} <= {
        g.name for g in gold}
    ours = np.stack([outside_preprocess(g, spec) for g in gold])
    theirs = np.stack([p._preprocess(g) for g in gold])
    assert ours.shape == theirs.shape == (len(gold), 3, 16, 16) and ours.dtype == np.float32
    assert np.abs(ours - theirs).max() <= 1e-6
    import onnxruntime as ort  # and through the package's own ONNX model, the same decisions and probabilities

    logits = ort.InferenceSession(str(PackageDir(package).onnx)).run(None, {'input': ours})[0]
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    ref, _ = p.predict_proba(gold)
    np.testing.assert_allclose(probs, ref, atol=1e-5)
    assert spec['output']['kind'] == 'logits' and (probs.argmax(1) == ref.argmax(1)).all()


def test_each_written_step_matters(package):
    "Skipping the EXIF step (what the old card allowed) changes the input: the written step is not decoration."
    spec = json.loads(PackageDir(package).preprocess.read_text())
    exif = PackageDir(package).golden / 'odd_exif_rotated.jpg'
    full = outside_preprocess(exif, spec)
    no_exif = outside_preprocess(exif, dict(spec, steps=[s for s in spec['steps'] if s['op'] != 'exif_orientation']))
    assert np.abs(full - no_exif).max() > 0.5


@pytest.mark.parametrize('resize', ['crop', 'pad'])
def test_outside_preprocessing_follows_crop_and_pad(tmp_path, resize):
    spec = PreprocessSpec(size=(12, 10), resize=resize)
    spec.save(tmp_path / 'preprocess.json')
    written = json.loads((tmp_path / 'preprocess.json').read_text())
    for i, size in enumerate([(31, 17), (9, 40), (13, 13)]):
        f = tmp_path / f'{i}.png'
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (*size[::-1], 4), dtype=np.uint8)).save(f)
        assert np.abs(outside_preprocess(f, written) - spec(f).numpy()).max() <= 1e-6


def test_card_lists_steps_output_and_small_differences(package):
    card = PackageDir(package).card.read_text()
    assert '## Preprocessing' in card and 'exif_orientation' in card and 'returns logits' in card
    assert '65535' in card and 'over opaque black' in card and 'antialiased' in card and 'replicated' in card
    parity = pd.read_csv(PackageDir(package).parity)
    row = next(line for line in card.splitlines() if line.startswith('| onnx'))
    assert f'{parity.set_index("backend").max_abs_diff["onnx"]:.2g}' in row
    assert '0.0000 ' not in row.split('|')[2]


def test_export_warns_nothing_deprecated(tmp_path):
    import warnings

    rd = make_run(tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        export_package(rd, tmp_path / 'pk', formats=('torchscript',), n_golden=2)
    assert [str(w.message) for w in caught if issubclass(w.category, (DeprecationWarning, FutureWarning))] == []
    assert read_package(tmp_path / 'pk')['formats'] == ['safetensors', 'torchscript']


def test_a_trace_that_depends_on_its_input_is_refused(tmp_path):
    import torch
    from cvbench.deploy.export import export_torchscript

    class Branchy(torch.nn.Module):
        def forward(self, x):
            return x.mean((2, 3)) if x.sum() > 0 else -x.mean((2, 3))

    with pytest.raises(ExportParityError, match='cannot be traced faithfully'):
        export_torchscript(Branchy(), PreprocessSpec(size=8), tmp_path / 'm.ts')


# -- 4. package integrity: every broken package is a clear PackageError naming the file and the fix ----------------


def _copy(package: Path, dest: Path) -> Path:
    import shutil

    return Path(shutil.copytree(package, dest))


def _edit_manifest(p: Path, **changes) -> Path:
    m = json.loads(PackageDir(p).manifest.read_text())
    PackageDir(p).manifest.write_text(json.dumps({k: v for k, v in {**m, **changes}.items() if v is not None}))
    return p


def _rehash(p: Path, f: str) -> Path:
    from cvbench.deploy.package import sha256

    m = json.loads(PackageDir(p).manifest.read_text())
    m['files'][f] = sha256(p / f)
    PackageDir(p).manifest.write_text(json.dumps(m))
    return p


def _onnx_of_other_size(package: Path, p: Path) -> Path:
    "Replace model.onnx by the same model exported for 24x24 inputs, and re-hash it (a consistent-looking lie)."
    from cvbench.deploy.export import export_onnx
    from cvbench.models import load_checkpoint

    model, _ = load_checkpoint(PackageDir(package).model)
    export_onnx(model, PreprocessSpec(size=24), PackageDir(p).onnx)
    return _rehash(p, 'model.onnx')


CASES = {
    'tampered file': (lambda pk, p: (PackageDir(p).model.write_bytes(b'x' * 100), p)[1],
                      ['model.safetensors', 'SHA-256', 'export the package again']),
    'missing model file': (lambda pk, p: (PackageDir(p).onnx.unlink(), p)[1],
                           ['model.onnx is missing', 'export the package again']),
    'missing manifest': (lambda pk, p: (PackageDir(p).manifest.unlink(), p)[1],
                         ['not a cvbench model package', 'package.json', 'cvbench export']),
    'manifest not JSON': (lambda pk, p: (PackageDir(p).manifest.write_text('{"name": "x", '), p)[1],
                          ['package.json is not valid JSON', 'export the package again']),
    'manifest missing keys': (lambda pk, p: _edit_manifest(p, files=None, classes=None),
                              ["lacks or mangles key(s) ['classes', 'files']", 'export the package again']),
    'manifest not an object': (lambda pk, p: (PackageDir(p).manifest.write_text('[1, 2]'), p)[1],
                               ['lacks or mangles', 'package.json']),
    'onnx input shape differs from spec': (_onnx_of_other_size, ['model.onnx', '24, 24', '(batch, 3, 16, 16)',
                                                                 'export the package again']),
    'onnx not an onnx file': (lambda pk, p: _rehash((PackageDir(p).onnx.write_bytes(b'junk'), p)[1], 'model.onnx'),
                              ['model.onnx is not a readable ONNX model', 'export the package again']),
    'preprocess not listed': (lambda pk, p: _edit_manifest(p, files={'model.onnx': 'x'}),
                              ['does not list preprocess.json']),
    'folder does not exist': (lambda pk, p: p.with_name('nowhere'), ['nowhere does not exist', 'check the path']),
    'file instead of folder': (lambda pk, p: PackageDir(p).manifest, ['is a file, not a package folder']),
}


@pytest.mark.parametrize('case', list(CASES))
def test_broken_package_is_a_clear_error(package, tmp_path, case):
    break_it, words = CASES[case]
    target = break_it(package, _copy(package, tmp_path / 'pk'))
    for load in (read_package, Predictor.load):
        with pytest.raises(PackageError) as e:
            load(target)
        msg = str(e.value)
        assert all(w in msg for w in words), msg
        assert 'Traceback' not in msg and len(msg) < 400


def test_broken_preprocess_json_is_a_clear_error(package, tmp_path):
    "A hand-edited spec (unknown key, edited step) is refused by the predictor with the file's name."
    p = _copy(package, tmp_path / 'pk')
    f = PackageDir(p).preprocess
    spec = json.loads(f.read_text())
    f.write_text(json.dumps(dict(spec, colour='BGR')))
    with pytest.raises(CvbenchError, match=r"preprocess.json: unknown key\(s\) \['colour'\]"):
        Predictor.load(_rehash(p, 'preprocess.json'))
    spec['steps'][4]['background'] = [255, 255, 255]
    f.write_text(json.dumps(spec))
    with pytest.raises(CvbenchError, match='steps` differ from what this cvbench applies'):
        Predictor.load(_rehash(p, 'preprocess.json'))


def test_package_files_get_the_users_umask(package):
    "Files 0644 and folders 0755 under the usual umask 022, not mkstemp's 0600 / mkdtemp's 0700."
    mask = os.umask(0)
    os.umask(mask)
    modes = {p.name: p.stat().st_mode & 0o777 for p in [package, *package.rglob('*')]}
    want = {p.name: (0o777 if p.is_dir() else 0o666) & ~mask for p in [package, *package.rglob('*')]}
    assert modes == want


# -- 5. kill -9 during an export: the previous package always loads --------------------------------------------------

KILLER = textwrap.dedent('''
    import json, math, os, random, signal, sys, time
    from pathlib import Path
    import torch
    torch.set_num_threads(1)  # forked children must not inherit a thread pool
    os.umask(0o022)
    from cvbench.deploy.export import export_package
    from cvbench.deploy.package import read_package, PackageDir

    rd, out, trials, seed = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    t0 = time.perf_counter()
    export_package(rd, out, n_golden=2)  # the previous package; also warms every import
    full = time.perf_counter() - t0
    rng, rows = random.Random(seed), []
    for i in range(trials):
        before = PackageDir(out).manifest.read_text()
        delay = math.exp(rng.uniform(math.log(0.005), math.log(1.15 * full)))  # log-uniform: most kills early, cheap
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                export_package(rd, out, n_golden=2)
                code = 0
            finally:
                os._exit(code)
        time.sleep(delay)
        os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
        row = dict(delay=round(delay, 3), killed=os.WIFSIGNALED(status), error=None)
        try:
            read_package(out, verify=True)
            row['same'] = PackageDir(out).manifest.read_text() == before
            files = [out, *out.rglob('*')]
            row['modes_ok'] = all(p.stat().st_mode & 0o777 == (0o755 if p.is_dir() else 0o644) for p in files)
        except Exception as e:
            row['error'] = f'{type(e).__name__}: {e}'
        row['leftovers'] = sorted(p.name for p in out.parent.iterdir() if p.name.startswith(f'.{out.name}.'))
        rows.append(row)
    before = PackageDir(out).manifest.read_text()
    pid = os.fork()  # and one export left to finish: the forked exporter really runs to the end
    if pid == 0:
        try:
            export_package(rd, out, n_golden=2)
        finally:
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    finished = dict(code=os.waitstatus_to_exitcode(status), new=PackageDir(out).manifest.read_text() != before,
                    loads=bool(read_package(out, verify=True)))
    print(json.dumps(dict(full=full, trials=rows, finished=finished)))
''')


def test_kill_9_during_export_never_loses_the_package(tmp_path):
    rd = make_run(tmp_path)
    env = dict(os.environ, OMP_NUM_THREADS='1', MKL_NUM_THREADS='1')
    r = subprocess.run([sys.executable, '-c', KILLER, str(rd.path), str(tmp_path / 'out' / 'package'), str(KILL_TRIALS),
                        '0'], capture_output=True, text=True, env=env, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(r.stdout.strip().splitlines()[-1])
    trials = res['trials']
    assert len(trials) == KILL_TRIALS
    assert [t['error'] for t in trials if t['error']] == []  # the package at the final name always loads, verified
    assert all(t['modes_ok'] for t in trials)  # with the user's umask
    assert any(t['killed'] for t in trials)
    assert res['finished'] == dict(code=0, new=True, loads=True)


def test_kill_between_the_two_renames_is_recovered(package, tmp_path):
    "The one moment with no folder under the final name: the old package is parked, the new one not yet in place."
    p = _copy(package, tmp_path / 'pk')
    before = PackageDir(p).manifest.read_text()
    p.rename(tmp_path / '.pk.old')  # what the swap does first
    (tmp_path / '.pk.x1y2z3').mkdir()  # the staged package it was about to rename in
    assert read_package(p)['classes'] == CLASSES and PackageDir(p).manifest.read_text() == before
    assert not (tmp_path / '.pk.old').exists()
