"""Issue 10, the service: the byte limit holds while a body streams in, one error shape for every 4xx, bounded metric
labels, every request timed, bind before announce, 503 with Retry-After under overload, and a bad-request battery."""

import asyncio, http.client, io, json, re, select, socket, subprocess, sys, threading, time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
import numpy as np
import pytest
from PIL import Image

CLASSES = ['red', 'green', 'blue']


@pytest.fixture(scope='session')
def package(tmp_path_factory) -> Path:
    "The smallest real package, no training: an ONNX model whose logits are 4x the mean colour, on 32-pixel inputs."
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    from cvbench.deploy.package import PackageDir, finalize_package
    from cvbench.transforms import PreprocessSpec

    pk = PackageDir(tmp_path_factory.mktemp('staged'))
    weights = [numpy_helper.from_array(np.eye(3, dtype=np.float32) * 4, 'w'),
               numpy_helper.from_array(np.zeros(3, np.float32), 'b')]
    nodes = [helper.make_node('GlobalAveragePool', ['input'], ['pooled']),
             helper.make_node('Flatten', ['pooled'], ['flat']),
             helper.make_node('Gemm', ['flat', 'w', 'b'], ['logits'], transB=1)]
    graph = helper.make_graph(nodes, 'mean-colour',
                              [helper.make_tensor_value_info('input', TensorProto.FLOAT, ['batch', 3, 32, 32])],
                              [helper.make_tensor_value_info('logits', TensorProto.FLOAT, ['batch', 3])], weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid('', 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(pk.onnx))
    spec = PreprocessSpec(size=32, mean=(0, 0, 0), std=(1, 1, 1))
    spec.save(pk.preprocess)
    manifest = dict(name='tiny', run='tiny', arch='mean-colour', classes=CLASSES, formats=['onnx'],
                    preprocess=spec.to_dict(), cvbench_version='test')
    return finalize_package(pk.path, tmp_path_factory.mktemp('packages') / 'tiny', manifest)


def png(w: int, h: int, colour=(200, 30, 30), noise: bool = False) -> bytes:
    "A PNG of `w`x`h` pixels (random noise if `noise`)."
    im = Image.new('RGB', (w, h), colour)
    if noise:
        im = Image.fromarray(np.random.default_rng(w).integers(0, 256, (h, w, 3), dtype=np.uint8))
    buf = io.BytesIO()
    im.save(buf, 'PNG')
    return buf.getvalue()


def zero_pixel_png() -> bytes:
    "A well-formed PNG (valid CRCs) that declares a 0x0 image."
    import struct, zlib

    def chunk(kind, data):
        return struct.pack('>I', len(data)) + kind + data + struct.pack('>I', zlib.crc32(kind + data))

    return (b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', struct.pack('>IIBBBBB', 0, 0, 8, 2, 0, 0, 0))
            + chunk(b'IDAT', zlib.compress(b'')) + chunk(b'IEND', b''))


def multipart(files: list[tuple[str, bytes]], boundary='cvbenchtestboundary') -> tuple[bytes, str]:
    "A multipart/form-data body with `files` as `files` fields, and its Content-Type."
    parts = b''.join(f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="{n}"\r\n'
                     f'Content-Type: image/png\r\n\r\n'.encode() + d + b'\r\n' for n, d in files)
    return parts + f'--{boundary}--\r\n'.encode(), f'multipart/form-data; boundary={boundary}'


# --- in-process: the app driven by hand over ASGI, one chunk at a time -------------------------------------------

def asgi_post(app, chunks: list[bytes], path='/predict', headers: dict | None = None):
    "POST `chunks` one by one to ASGI `app`; (status, response headers, JSON answer, chunks the app read)."
    out = dict(read=0, body=b'', headers={})
    hs = [(k.lower().encode(), str(v).encode()) for k, v in (headers or {}).items()]
    scope = dict(type='http', asgi={'version': '3.0'}, http_version='1.1', method='POST', scheme='http', path=path,
                 raw_path=path.encode(), root_path='', query_string=b'', headers=hs,
                 client=('127.0.0.1', 50000), server=('127.0.0.1', 8000))

    async def receive():
        i = out['read']
        out['read'] += i < len(chunks)
        return dict(type='http.request', body=chunks[i] if i < len(chunks) else b'', more_body=i + 1 < len(chunks))

    async def send(msg):
        if msg['type'] == 'http.response.start':
            out['status'], out['headers'] = msg['status'], {k.decode(): v.decode() for k, v in msg['headers']}
        out['body'] += msg.get('body', b'')

    async def go():
        await app(scope, receive, send)
        return out['status'], out['headers'], json.loads(out['body']), out['read']

    return go()


def test_chunked_upload_is_refused_while_streaming(package):
    from cvbench.deploy.serve import create_app

    app = create_app(package, max_bytes=100_000)
    chunks = [b'x' * 65_536] * 1000  # 65 MB, no Content-Length: what a chunked upload looks like to the app
    status, _, answer, read = asyncio.run(asgi_post(app, chunks))
    assert (status, read) == (413, 2), (status, read)  # stopped on the chunk that passed 100 kB, 63.9 MB never read
    assert list(answer) == ['error'] and '100,000 bytes' in answer['error'] and '--max-bytes' in answer['error']
    # a declared length over the limit is refused before a byte is read
    status, _, answer, read = asyncio.run(asgi_post(app, chunks, headers={'content-length': 65_536_000}))
    assert (status, read, list(answer)) == (413, 0, ['error'])
    # the same image in small chunks under the limit is read whole and answered
    img = png(64, 64)
    status, _, answer, read = asyncio.run(asgi_post(app, [img[i:i + 100] for i in range(0, len(img), 100)]))
    assert status == 200 and answer['results'][0]['label'] == 'red' and read == -(-len(img) // 100)


def test_overload_is_503_with_retry_after(package):
    "With 1 worker and a queue of 1, a third concurrent prediction is turned away at once; the first two finish."
    from cvbench.deploy.serve import create_app

    app = create_app(package, workers=1, queue=1)
    real, gate = app.state.predictor, threading.Event()

    class Slow:  # the real predictor, held at a gate
        manifest, classes = real.manifest, real.classes

        def predict(self, blobs):
            assert gate.wait(30)
            return real.predict(blobs)

    app.state.predictor = Slow()
    img = png(8, 8)

    async def main():
        held = [asyncio.create_task(asgi_post(app, [img])) for _ in range(2)]
        for _ in range(500):
            if app.state.metrics.admitted == 2:
                break
            await asyncio.sleep(0.01)
        turned_away = await asgi_post(app, [img])
        gate.set()
        return turned_away, [await t for t in held]

    (status, headers, answer, read), held = asyncio.run(main())
    assert (status, headers['retry-after'], read) == (503, '1', 0)
    assert list(answer) == ['error'] and 'retry after 1 s' in answer['error']
    assert [h[0] for h in held] == [200, 200] and app.state.metrics.admitted == 0


# --- in-process: the battery through Starlette's TestClient --------------------------------------------------------

@pytest.fixture(scope='module')
def client(package):
    from starlette.testclient import TestClient
    from cvbench.deploy.serve import create_app

    with TestClient(create_app(package, max_bytes=200_000, max_batch=4)) as c:
        yield c


def _bomb() -> bytes:
    "A PNG of 400 M pixels in a few kB."
    buf = io.BytesIO()
    Image.new('1', (20_000, 20_000)).save(buf, 'PNG')
    return buf.getvalue()


def _parts(files: list[tuple[str, bytes]]) -> dict:
    body, ctype = multipart(files)
    return dict(content=body, headers={'Content-Type': ctype})


BIG = png(300, 300, noise=True)  # ~270 kB of noise: over the client's 200 kB limit
BATTERY = {  # case: (method, path, request keywords, expected status)
    'oversized body': ('POST', '/predict', lambda: dict(content=BIG), 413),
    'chunked oversized body': ('POST', '/predict', lambda: dict(content=iter([BIG[:100_000]] * 3)), 413),
    'garbage bytes': ('POST', '/predict', lambda: dict(content=b'\x13\x37 definitely not an image'), 422),
    'empty body': ('POST', '/predict', lambda: dict(content=b''), 400),
    'JSON content type': ('POST', '/predict', lambda: dict(json={'image': 'aGVsbG8='}), 415),
    'text content type': ('POST', '/predict', lambda: dict(content=b'hi', headers={'Content-Type': 'text/plain'}), 415),
    'truncated PNG': ('POST', '/predict', lambda: dict(content=png(40, 40)[:70]), 422),
    'PNG of 0 pixels': ('POST', '/predict', lambda: dict(content=zero_pixel_png()), 422),
    'decompression bomb': ('POST', '/predict', lambda: dict(content=_bomb()), 422),
    'multipart, no file': ('POST', '/predict', lambda: _parts([]), 400),
    'multipart, chunked oversized': ('POST', '/predict', lambda: dict(_parts([('a.png', BIG)]), content=iter(
        [_parts([('a.png', BIG)])['content']])), 413),
    'multipart, too many files': ('POST', '/predict', lambda: _parts([(f'{i}.png', png(8, 8)) for i in range(5)]), 413),
    'multipart, only garbage': ('POST', '/predict', lambda: _parts([('a.txt', b'no image'), ('b', b'\0' * 9)]), 422),
    'multipart without boundary': ('POST', '/predict',
                                   lambda: dict(content=b'--x\r\n', headers={'Content-Type': 'multipart/form-data'}),
                                   400),
    'unknown route': ('GET', '/predict/v2', dict, 404),
    'wrong method': ('GET', '/predict', dict, 405),
    'wrong method on health': ('DELETE', '/health', dict, 405),
}


@pytest.mark.parametrize('case', BATTERY)
def test_battery_clear_4xx_and_still_serving(client, case):
    method, path, make, expected = BATTERY[case]
    r = client.request(method, path, **make())
    assert r.status_code == expected, (case, r.status_code, r.text)
    body = r.json()
    assert set(body) <= {'error', 'results'} and isinstance(body['error'], str) and len(body['error']) > 15, body
    if expected == 405:
        assert 'GET' in r.headers['allow'] or 'POST' in r.headers['allow']
    # still answering, and answering right, afterwards
    ok = client.post('/predict', content=png(16, 16, (20, 20, 220)))
    assert ok.status_code == 200 and ok.json()['results'][0]['label'] == 'blue'


def test_tiny_images_and_batches_are_answered(client):
    r = client.post('/predict', content=png(1, 1, (10, 240, 10)), headers={'Content-Type': 'image/png'})
    assert r.status_code == 200 and r.json()['results'][0]['label'] == 'green'
    body, ctype = multipart([('r.png', png(8, 8)), ('bad.png', b'\x89PNG\r\n'), ('b.png', png(2, 9, (0, 0, 255)))])
    res = client.post('/predict', content=body, headers={'Content-Type': ctype}).json()['results']
    assert [r.get('label') for r in res] == ['red', None, 'blue'] and [r['file'] for r in res] == ['r.png', 'bad.png',
                                                                                                  'b.png']
    assert 'error' in res[1]


def test_metric_labels_are_bounded_and_every_request_is_timed(package):
    from prometheus_client.parser import text_string_to_metric_families
    from starlette.testclient import TestClient
    from cvbench.deploy.serve import create_app

    c = TestClient(create_app(package, max_bytes=1000))
    statuses = [c.get(f'/probe/{i}').status_code for i in range(40)]  # a scanner
    statuses += [c.post('/predict', content=b'x' * 2000).status_code, c.post('/predict', content=b'').status_code,
                 c.post('/predict', content=png(4, 4)).status_code, c.get('/health').status_code]
    assert statuses == [404] * 40 + [413, 400, 200, 200]
    fams = {f.name: f for f in text_string_to_metric_families(c.get('/metrics').text)}
    reqs = {(s.labels['endpoint'], s.labels['status']): s.value for s in fams['cvbench_requests'].samples
            if s.name == 'cvbench_requests_total'}
    timed = {s.labels['endpoint']: s.value for s in fams['cvbench_request_seconds'].samples
             if s.name == 'cvbench_request_seconds_count'}
    assert reqs == {('other', '404'): 40, ('/predict', '413'): 1, ('/predict', '400'): 1, ('/predict', '200'): 1,
                    ('/health', '200'): 1}
    assert timed == {'other': 40, '/predict': 3, '/health': 1}  # the rejected ones too
    errors = {s.labels['type']: s.value for s in fams['cvbench_errors'].samples if s.name == 'cvbench_errors_total'}
    assert errors == {'too_large': 1}


def test_a_fault_of_the_service_is_a_json_500_and_it_keeps_serving(package, caplog):
    from starlette.testclient import TestClient
    from cvbench.deploy.serve import create_app

    app = create_app(package)
    real = app.state.predictor

    class Broken:
        manifest, classes = real.manifest, real.classes

        def predict(self, blobs):
            raise RuntimeError('a bug')

    c = TestClient(app)
    app.state.predictor = Broken()
    r = c.post('/predict', content=png(4, 4))
    msg = 'internal error (RuntimeError); the server log has the details'
    assert (r.status_code, r.json()) == (500, {'error': msg})
    assert 'a bug' in caplog.text  # logged with its traceback, not swallowed
    app.state.predictor = real
    assert c.post('/predict', content=png(4, 4)).status_code == 200


def test_bad_settings_and_a_taken_port_are_clear_errors(package):
    from cvbench.core import CvbenchError
    from cvbench.deploy.serve import bind_socket, create_app, serve

    with pytest.raises(CvbenchError, match='workers must be an integer >= 1'):
        create_app(package, workers=0)
    with bind_socket('127.0.0.1', 0) as s:
        port = s.getsockname()[1]
        heard = []
        with pytest.raises(CvbenchError, match=f'cannot listen on 127.0.0.1:{port}.*choose another --port'):
            serve(package, port=port, announce=heard.append)
        assert heard == []  # nothing announced for a socket that could not be bound


# --- a real uvicorn server on loopback -----------------------------------------------------------------------------

def _kb(pid: int, field: str) -> int:
    "A `/proc/PID/status` field in kB (VmRSS now, VmHWM the peak)."
    return int(re.search(rf'^{field}:\s+(\d+) kB', Path(f'/proc/{pid}/status').read_text(), re.M).group(1))


@pytest.fixture(scope='module')
def server(package):
    "`cvbench.deploy.serve.serve` in a subprocess on a free port: (host, port, pid), once it has announced itself."
    if not Path('/proc/self/status').exists():
        pytest.skip('needs /proc to read the server RSS')
    code = ('from cvbench.deploy.serve import serve; '
            f'serve({str(package)!r}, port=0, max_bytes=1_000_000, threads=1, workers=1, queue=4, '
            'announce=lambda m: print(m, flush=True))')
    srv = subprocess.Popen([sys.executable, '-c', code], stdout=subprocess.PIPE, text=True)
    try:
        line = srv.stdout.readline()
        host, port = re.search(r'http://([\d.]+):(\d+)', line).groups()
        yield host, int(port), srv.pid
    finally:
        srv.terminate()
        srv.wait(30)


def _request(conn: http.client.HTTPConnection, method: str, path: str, body: bytes | None = None):
    conn.request(method, path, body=body, headers={'Content-Type': 'application/octet-stream'} if body else {})
    r = conn.getresponse()
    return r.status, r.getheader('Retry-After'), r.read()


def test_serve_listens_before_it_announces(server):
    host, port, _ = server
    conn = http.client.HTTPConnection(host, port, timeout=30)  # one try, no polling: the announcement is the signal
    status, _, body = _request(conn, 'GET', '/health')
    assert status == 200 and json.loads(body)['model'] == 'tiny'


def chunked_upload(host: str, port: int, chunk: bytes, n: int) -> tuple[int, int, bytes]:
    "POST `n` x `chunk` with `Transfer-Encoding: chunked`, stopping once the server answers: (status, sent, body)."
    s = socket.create_connection((host, port), timeout=60)
    s.sendall(b'POST /predict HTTP/1.1\r\nHost: test\r\nContent-Type: application/octet-stream\r\n'
              b'Transfer-Encoding: chunked\r\n\r\n')
    sent = 0
    for _ in range(n):
        if select.select([s], [], [], 0.005)[0]:
            break
        s.sendall(b'%x\r\n' % len(chunk) + chunk + b'\r\n')
        sent += len(chunk)
    else:
        s.sendall(b'0\r\n\r\n')
    reply = b''
    while b'\r\n\r\n' not in reply:
        reply += s.recv(65536)
    head, body = reply.split(b'\r\n\r\n', 1)
    length = int(re.search(rb'content-length: (\d+)', head, re.I).group(1))
    while len(body) < length:
        body += s.recv(65536)
    s.close()
    return int(head.split()[1]), sent, body


def test_chunked_upload_to_the_real_server_is_refused_early(server):
    host, port, pid = server
    peak0 = _kb(pid, 'VmHWM')
    status, sent, body = chunked_upload(host, port, b'\0' * 65536, 2048)  # up to 128 MiB
    assert status == 413 and list(json.loads(body)) == ['error']
    assert sent < 32 * 2**20, sent  # answered long before the client finished: the limit is 1 MB
    assert _kb(pid, 'VmHWM') - peak0 < 64 * 1024  # the upload was never held in memory
    conn = http.client.HTTPConnection(host, port, timeout=30)
    assert _request(conn, 'POST', '/predict', png(8, 8))[0] == 200


def test_loopback_load_beyond_the_workers(server):
    "24 clients against 1 worker + a queue of 4: only 200s and 503s, every request answered, RSS bounded."
    host, port, pid = server
    img, n_clients, per_client = png(96, 96, noise=True), 24, 13
    conn = http.client.HTTPConnection(host, port, timeout=60)
    assert _request(conn, 'POST', '/predict', img)[0] == 200  # warm
    rss0, peak0 = _kb(pid, 'VmRSS'), _kb(pid, 'VmHWM')

    def client(_):
        c, out = http.client.HTTPConnection(host, port, timeout=60), []
        for _ in range(per_client):
            t0 = time.perf_counter()
            try:
                status, retry, _ = _request(c, 'POST', '/predict', img)
            except (OSError, http.client.HTTPException) as e:
                status, retry = type(e).__name__, None
                c = http.client.HTTPConnection(host, port, timeout=60)
            out.append((status, retry, time.perf_counter() - t0))
        return out

    with ThreadPoolExecutor(n_clients) as ex:
        results = [r for rs in ex.map(client, range(n_clients)) for r in rs]
    statuses = [s for s, _, _ in results]
    figures = dict(requests=len(results), ok=statuses.count(200), busy_503=statuses.count(503),
                   other=sum(s not in (200, 503) for s in statuses),
                   p95_ms=round(1e3 * float(np.percentile([t for *_, t in results], 95)), 1),
                   p95_ok_ms=round(1e3 * float(np.percentile([t for s, _, t in results if s == 200], 95)), 1),
                   rss_mb=round(rss0 / 1024, 1), peak_rss_mb=round(_kb(pid, 'VmHWM') / 1024, 1),
                   peak_growth_mb=round((_kb(pid, 'VmHWM') - peak0) / 1024, 1))
    print('service load:', json.dumps(figures))
    assert figures['requests'] == n_clients * per_client and figures['other'] == 0, (figures, set(statuses))
    assert all(r == '1' for s, r, _ in results if s == 503)
    assert figures['peak_growth_mb'] < 150, figures
    fresh = http.client.HTTPConnection(host, port, timeout=30)  # `conn` may have passed the keep-alive timeout
    assert _request(fresh, 'GET', '/health')[0] == 200
