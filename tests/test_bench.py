"""Issue 10 items 8 and 9: `bench` reads each backend's own peak memory, `quantize` times fp32 and int8 in turn and
its int8 model loads in the Predictor, and a Predictor batch with a missing or corrupt image still predicts the rest."""

import shutil, subprocess, time
import numpy as np
import pytest
import cvbench.deploy.bench as bench
from cvbench.core import CvbenchError, read_json, write_json
from cvbench.deploy.bench import backend_peak_argv, backends, interleaved_times, latency_summary, peak_argv, run_peak
from cvbench.deploy.predictor import Predictor
from conftest import make_imagefolder

TOUCH_200MB = 'import numpy as np, time\na = np.ones(200 * 2**20 // 8)\ntime.sleep(0.3)'  # written, so resident


def outside_peak_mb(argv: list) -> tuple[float, str]:
    "Run `argv` while polling its resident memory from outside with psutil; the largest reading (MB) and stdout."
    psutil = pytest.importorskip('psutil')
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc, peak = psutil.Process(p.pid), 0
    while p.poll() is None:
        try:
            peak = max(peak, proc.memory_info().rss)
        except psutil.Error:
            break
        time.sleep(0.002)
    out, err = p.communicate(timeout=300)
    assert p.returncode == 0, err[-2000:]
    return peak / 2**20, out


def test_child_reads_its_own_peak_not_its_parents():
    held = np.ones(300 * 2**20 // 8)  # this process now holds 300 MB more than a fresh interpreter
    r = subprocess.run(peak_argv('import resource; print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)'),
                       capture_output=True, text=True)
    del held
    own = bench._parse_peak(r.stdout)
    old_reading_mb = int(r.stdout.splitlines()[-2]) / 1024  # what bench read before: ru_maxrss, in KiB
    assert own['method'] == 'VmHWM'
    assert own['peak_mb'] < 150, own  # the child's own high-water mark
    assert old_reading_mb > 300  # ru_maxrss of a child carries its parent's mark across exec


def test_known_allocation_against_an_outside_reading():
    idle = run_peak(peak_argv('import numpy, time\ntime.sleep(0.3)'))
    sampled, out = outside_peak_mb(peak_argv(TOUCH_200MB))
    busy = bench._parse_peak(out)
    assert busy['peak_mb'] - idle['peak_mb'] == pytest.approx(200, abs=15)
    # psutil samples from outside can only miss the very top, never exceed the true peak
    assert busy['peak_mb'] - 15 <= sampled <= busy['peak_mb'] * 1.01 + 1, (sampled, busy)


def test_failed_measurement_is_a_clear_error():
    with pytest.raises(CvbenchError, match='exit 3'):
        run_peak(peak_argv('raise SystemExit(3)'))


class FakeClock:
    "Each call of a timed function costs a fixed time; the machine runs 4x slower for its first `slow` calls."

    def __init__(self, slow: int = 40):
        self.now, self.n, self.slow = 0.0, 0, slow

    def perf_counter(self):
        return self.now

    def fn(self, cost: float):
        def f():
            self.now += cost * (4 if self.n < self.slow else 1)
            self.n += 1

        return f


def test_interleaved_timing_is_fair_where_sequential_timing_is_not(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(bench, 'time', clock)
    # the old protocol: fp32 timed first (5 warm-up calls), then int8: fp32 pays for the machine warming up
    t32 = np.median(bench.time_calls(clock.fn(2e-3)))
    t8 = np.median(bench.time_calls(clock.fn(1e-3)))
    assert t32 / t8 == pytest.approx(8.0)  # overstated 4x
    clock = FakeClock()
    monkeypatch.setattr(bench, 'time', clock)
    t = interleaved_times(dict(fp32=clock.fn(2e-3), int8=clock.fn(1e-3)), rounds=7)
    assert list(t.name[:4]) == ['fp32', 'int8', 'int8', 'fp32'] and len(t) == 14
    s = latency_summary(t)
    assert s.loc['fp32', 'median_ms'] / s.loc['int8', 'median_ms'] == pytest.approx(2.0)
    assert s.loc['fp32', 'min_ms'] == pytest.approx(2.0) and s.loc['int8', 'min_ms'] == pytest.approx(1.0)


@pytest.fixture(scope='module')
def package(tmp_path_factory):
    "A quantized package of a one-epoch resnet10t on a small two-class ImageFolder, and some validation images."
    from cvbench.core import load_config
    from cvbench.runs import train_run
    from cvbench.deploy.export import export_package
    from cvbench.data.samples import load_samples_table

    tmp = tmp_path_factory.mktemp('bench')
    source = make_imagefolder(tmp / 'images', {'cat': 30, 'dog': 30}, size=(20, 20))
    overrides = [f'runs_dir={tmp}/runs', f'reports_dir={tmp}/reports', f'data.source={source}', 'data.valid_pct=0.3',
                 'model.name=resnet10t', 'preprocess.size=16', 'train.epochs=1', 'track.wandb=false']
    rd = train_run(load_config(overrides=overrides))
    pkg = export_package(rd, tmp / 'pkg')
    s = load_samples_table(rd / 'samples.parquet')
    tr, va = s.subset('train'), s.subset('valid')
    q = bench.quantize_package(pkg, tr.paths(), va.paths(), va.df.label.tolist(), rounds=5)
    return pkg, q, va.paths()[:8]


def test_quantize_reports_interleaved_min_and_median(package):
    pkg, q, _ = package
    assert q['latency_int8_min_ms'] <= q['latency_int8_ms'] and q['latency_fp32_min_ms'] <= q['latency_fp32_ms']
    assert q['speedup'] == pytest.approx(q['latency_fp32_ms'] / q['latency_int8_ms'])
    assert '5 interleaved rounds' in q['timing']
    assert read_json(pkg / 'quantization.json') == q
    with pytest.raises(CvbenchError, match='at least 5'):
        bench.quantize_package(pkg, package[2], package[2], rounds=4)


def test_int8_predictor_runs_the_int8_model(package):
    import onnxruntime as ort

    pkg, q, paths = package
    p8, p32 = Predictor.load(pkg, 'int8', threads=1), Predictor.load(pkg, 'onnx', threads=1)
    probs, errs = p8.predict_proba(paths)
    assert errs == [None] * len(paths)
    # independently: ONNX Runtime on model.int8.onnx, fed the Predictor's own input, softmax by hand
    x = np.stack([p8._preprocess(p) for p in paths])
    sess = ort.InferenceSession(str(pkg / 'model.int8.onnx'), providers=['CPUExecutionProvider'])
    z = sess.run(None, {'input': x})[0]
    e = np.exp(z - z.max(1, keepdims=True))
    np.testing.assert_allclose(probs, e / e.sum(1, keepdims=True), atol=1e-5)
    assert not np.allclose(probs, p32.predict_proba(paths)[0], atol=1e-7)  # not the fp32 model
    assert p8.predict(paths[0])['label'] in p8.classes


def test_predictor_batch_with_missing_and_corrupt_images(package, tmp_path):
    pkg, _, paths = package
    p = Predictor.load(pkg, 'onnx', threads=1)
    assert p.predict([]) == []
    corrupt, empty = tmp_path / 'corrupt.png', tmp_path / 'empty.png'
    corrupt.write_bytes(paths[0].read_bytes()[:50])
    empty.write_bytes(b'')
    batch = [paths[0], tmp_path / 'missing.png', corrupt, paths[1], empty, paths[2]]
    alone = [p.predict(x) for x in (paths[0], paths[1], paths[2])]
    for bs in (32, 2):
        r = p.predict(batch, bs=bs)
        assert r[1] == dict(error='file not found') and 'truncated' in r[2]['error'] and '0 bytes' in r[4]['error']
        for got, want in zip((r[0], r[3], r[5]), alone):
            assert got['label'] == want['label'] and got['confidence'] == pytest.approx(want['confidence'], abs=1e-6)


def test_bench_peak_of_a_backend_against_an_outside_reading(package):
    pkg, _, _ = package
    sampled, out = outside_peak_mb(backend_peak_argv(pkg, 'ort fp32', threads=1, batch=4))
    own = bench._parse_peak(out)
    assert own['start_mb'] < 50 < own['peak_mb'], own
    # the child exits right after its reading, so an outside poll sees the same peak (or misses a short spike)
    assert own['peak_mb'] - 25 <= sampled <= own['peak_mb'] * 1.01 + 1, (sampled, own)


def test_torchscript_loads_only_when_the_manifest_vouches_for_it(package, tmp_path):
    pkg, _, _ = package
    copy = shutil.copytree(pkg, tmp_path / 'pkg')
    assert list(backends(copy, 1, only='torchscript')) == ['torchscript']
    man = read_json(copy / 'package.json')
    man['files'].pop('model.ts')
    write_json(copy / 'package.json', man)
    with pytest.raises(CvbenchError, match='not listed in package.json'):
        backends(copy, 1, only='torchscript')
