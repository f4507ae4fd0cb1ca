"""The docs site, JupyterLab and a run report, checked in a real browser: Debian's headless Chromium driven by
Playwright. Screenshots land in `reports/docs/` (home, api, tutorial, jupyterlab, report)."""

import functools, http.server, os, shutil, socket, subprocess, sys, threading, time, urllib.request
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]
SHOTS = ROOT / 'reports' / 'docs'
CHROMIUM_FLAGS = [
    '--no-sandbox',
    '--disable-gpu',
    '--disable-quic',
    '--no-first-run',
    '--disable-background-networking',
    '--disable-component-update',
    '--disable-sync',
]


def chromium_path() -> str:
    "Debian's Chromium, or a clear failure that says how to install it."
    found = shutil.which('chromium') or shutil.which('chromium-browser')
    if found is None:
        pytest.fail("Chromium is missing: install Debian's package (`sudo apt-get install chromium`, or `make browser`)")
    return found


@pytest.fixture(scope='module')
def browser():
    "A headless Chromium for this module."
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=chromium_path(), headless=True, args=CHROMIUM_FLAGS)
        yield b
        b.close()


@pytest.fixture
def page(browser):
    "A fresh page at a desktop size; JavaScript errors are collected in `page.errors`."
    p = browser.new_page(viewport={'width': 1280, 'height': 900})
    p.errors = []
    p.on('pageerror', lambda e: p.errors.append(str(e)))
    yield p
    p.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]



def serve(folder: Path):
    "Serve `folder` on localhost in a thread; returns (base url, server)."
    handler = functools.partial(QuietHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f'http://127.0.0.1:{server.server_address[1]}', server


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def wait_for(url: str, seconds: float = 90) -> None:
    "Poll `url` until it answers 200."
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f'{url} did not answer within {seconds} s')


def visible_images(page) -> list[int]:
    "naturalWidth of every image on the page (0 = broken)."
    return page.eval_on_selector_all('img', 'els => els.map(e => e.naturalWidth)')


def shoot(page, name: str) -> Path:
    SHOTS.mkdir(parents=True, exist_ok=True)
    dest = SHOTS / f'{name}.png'
    page.screenshot(path=str(dest))
    assert dest.stat().st_size > 10_000, f'{dest} is nearly empty'
    return dest


# JupyterLab: `make lab` opens the notebooks; a tutorial must render there.


@pytest.fixture(scope='module')
def lab(tmp_path_factory):
    "JupyterLab on a copy of `nbs/tutorials` (autosave never touches the real notebooks), token-less, localhost."
    port = free_port()
    cfg = tmp_path_factory.mktemp('jupyter')
    root = tmp_path_factory.mktemp('lab') / 'tutorials'
    shutil.copytree(ROOT / 'nbs' / 'tutorials', root, ignore=shutil.ignore_patterns('tutorial_runs'))
    settings = cfg / 'settings' / '@jupyterlab' / 'apputils-extension'
    settings.mkdir(parents=True)
    (settings / 'notification.jupyterlab-settings').write_text('{"fetchNews": "false", "checkForUpdates": false}')
    env = dict(os.environ, JUPYTER_CONFIG_DIR=str(cfg), JUPYTER_RUNTIME_DIR=str(cfg / 'runtime'),
               JUPYTERLAB_SETTINGS_DIR=str(cfg / 'settings'))
    cmd = [sys.executable, '-m', 'jupyterlab', '--no-browser', f'--port={port}', '--ServerApp.ip=127.0.0.1',
           '--IdentityProvider.token=', '--ServerApp.password=', f'--ServerApp.root_dir={root.parent}',
           '--ServerApp.allow_root=True']
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(f'http://127.0.0.1:{port}/api/status')
        yield f'http://127.0.0.1:{port}'
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_jupyterlab_opens_a_tutorial(lab, page):
    page.goto(f'{lab}/lab/tree/tutorials/01_quickstart.ipynb')
    page.wait_for_selector('.jp-NotebookPanel .jp-MarkdownOutput h1', timeout=90_000)
    title = page.inner_text('.jp-NotebookPanel .jp-MarkdownOutput h1')
    assert 'quickstart' in title.lower() or 'cvbench' in title.lower(), title
    page.wait_for_timeout(1500)
    shoot(page, 'jupyterlab')


# A run's report: what the README shows.


def test_a_run_report_renders(tiny, tmp_path, page):
    from conftest import run_cli

    rc, out, err = run_cli('run', *tiny)
    assert rc == 0, err
    (html,) = (tmp_path / 'reports').glob('*/report.html')
    page.goto(html.as_uri())
    widths = visible_images(page)
    assert len(widths) >= 3 and min(widths) > 0, widths  # confusion matrix, gallery, curves: all decoded
    assert 'Confusion matrix' in page.inner_text('body')
    assert page.errors == []
    shoot(page, 'report')
