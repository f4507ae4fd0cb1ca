"""Issue 5 (first part): export with end-to-end parity, predictor from the CLI, tampered packages refused. The
commands run through `cvbench.cli.main` in this process on the session's tiny run; the service is a real process."""

import json
from pathlib import Path
import pandas as pd
from conftest import cli_here as cli


def test_export_predict_report(tiny_run, tmp_path, data_cache):
    rd = tiny_run
    out = cli('export', rd, '--out', tmp_path / 'pkg', check=0).stdout
    assert 'package:' in out
    m = json.loads((tmp_path / 'pkg' / 'package.json').read_text())
    assert {'model.onnx', 'model.ts', 'model.safetensors', 'preprocess.json', 'MODEL_CARD.md'} <= set(
        m['files']
    ) and all(p['passed'] for p in m['parity'])
    card = (tmp_path / 'pkg' / 'MODEL_CARD.md').read_text()
    assert '## Export parity' in card and '## Latency' in card and '## Known limitations' in card
    r = cli('predict', tmp_path / 'pkg', data_cache / 'digits', '--out', tmp_path / 'l.parquet', check=0)
    assert 'accuracy:' in r.stdout and len(pd.read_parquet(tmp_path / 'l.parquet')) == 1797
    # the ledger goes straight into the evaluation tools
    cli('report', tmp_path / 'l.parquet', check=0)
    assert '## Headline metrics' in (tmp_path / 'l-report' / 'report.md').read_text()
    # a tampered package is refused
    (tmp_path / 'pkg' / 'model.onnx').write_bytes(b'garbage')
    assert (
        'does not match its recorded SHA-256'
        in cli('predict', tmp_path / 'pkg', data_cache / 'digits', '--out', tmp_path / 'x.parquet', check=2).stderr
    )


def test_bench_and_quantize_cli(tiny_run, tmp_path):
    rd = tiny_run
    cli('export', rd, '--out', tmp_path / 'pkg', check=0)
    q = cli('quantize', tmp_path / 'pkg', rd, '--calibration', 50, check=0).stdout
    assert 'agreement:' in q and 'recommend:' in q
    cli('bench', tmp_path / 'pkg', '--iters', 10, '--batch-sizes', 1, 4, check=0)
    t = pd.read_csv(tmp_path / 'pkg' / 'bench' / 'bench.csv')
    assert {'pytorch eager', 'torchscript', 'ort fp32', 'ort int8', 'predictor (onnx)'} <= set(t.backend)
    assert (t.peak_rss_mb.dropna() > 50).all() and (t.p99_ms >= t.p50_ms).all()


def test_service_over_http(tiny_run, tmp_path):
    import socket, subprocess, sys, time, urllib.request, uuid

    rd = tiny_run
    cli('export', rd, '--out', tmp_path / 'pkg', '--format', 'onnx', check=0)
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    srv = subprocess.Popen(
        [str(Path(sys.executable).parent / 'cvbench'), 'serve', tmp_path / 'pkg', '--port', str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )

    def post(body, ctype='application/octet-stream'):
        req = urllib.request.Request(
            f'http://127.0.0.1:{port}/predict', data=body, headers={'Content-Type': ctype}, method='POST'
        )
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    try:
        deadline = time.monotonic() + 300  # a fresh process imports torch first: seconds, or minutes on a busy machine
        while time.monotonic() < deadline and srv.poll() is None:
            try:
                with urllib.request.urlopen(f'http://127.0.0.1:{port}/health', timeout=2) as r:
                    assert json.loads(r.read())['status'] == 'ok'
                    break
            except OSError:
                time.sleep(0.2)
        img = sorted((tmp_path / 'pkg' / 'golden').glob('valid_*'))[0].read_bytes()
        b = uuid.uuid4().hex  # a multipart batch: two good images and a broken one
        parts = b''.join(
            (f'--{b}\r\nContent-Disposition: form-data; name="files"; filename="{n}"\r\n'
             'Content-Type: image/png\r\n\r\n').encode()
            + d
            + b'\r\n'
            for n, d in (('a.png', img), ('b.png', img), ('bad.png', b'\x89PNG broken'))
        )
        code, res = post(parts + f'--{b}--\r\n'.encode(), f'multipart/form-data; boundary={b}')
        assert code == 200 and [sorted(r) for r in res['results']] == [['confidence', 'file', 'label', 'probs']] * 2 + [
            ['error', 'file']
        ]
        assert post(b'')[0] == 400 and post(b'garbage')[0] == 422
        with urllib.request.urlopen(f'http://127.0.0.1:{port}/metrics', timeout=5) as r:
            m = r.read().decode()
        assert 'cvbench_errors_total{type="bad_image"} 2.0' in m and 'cvbench_confidence_count 2.0' in m
    finally:
        srv.terminate()
        srv.wait(10)
