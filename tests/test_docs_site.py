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
        pytest.fail("Chromium is missing: install Debian's package (`make browser` or `sudo apt-get install chromium`)")
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


# The docs site: built once from the committed notebooks, served on localhost, read in Chromium.


@pytest.fixture(scope='module')
def site(tmp_path_factory) -> Path:
    "`make docs` into a temporary folder (it raises on a chapter that fails processing or on a broken link)."
    if os.environ.get('CVBENCH_DOCS_SITE'):  # a site already built (`make docs`), to iterate on these tests
        return Path(os.environ['CVBENCH_DOCS_SITE'])
    sys.path.insert(0, str(ROOT / 'tools'))
    import build_docs

    return build_docs.build(out=tmp_path_factory.mktemp('site') / '_docs')


@pytest.fixture(scope='module')
def site_url(site):
    url, server = serve(site)
    yield url
    server.shutdown()


def page_texts(site: Path) -> dict[str, str]:
    return {str(p.relative_to(site)): p.read_text(errors='replace') for p in site.rglob('*.html')}


def test_every_internal_link_resolves(site):
    sys.path.insert(0, str(ROOT / 'tools'))
    import build_docs

    assert build_docs.check_links(site) == []
    pages = page_texts(site)
    assert {'index.html', 'data.samples.html', 'tutorials/quickstart.html', 'search.html'} <= set(pages)
    chapters = [p.stem.split('_', 1)[1] + '.html' for p in (ROOT / 'nbs').glob('[0-9]*.ipynb')]
    assert [c for c in chapters if c not in pages] == []  # every module chapter is an API page


def test_pages_hide_what_is_not_docs(site):
    "No `#| export`/`#| hide` markers, no hidden test cells (fastcore's `test_eq`) on any page."
    for name, text in page_texts(site).items():
        assert '#| export' not in text and '#| hide' not in text, name
        assert 'nbdev_export()' not in text, name


def test_symbols_are_cross_linked(site):
    "Backticked names in one chapter link to their entry in another (nbdev's doc links, made relative)."
    text = (site / 'data.detection.html').read_text()
    assert 'href="data.samples.html#samples"' in text
    assert (site / 'data.samples.html').read_text().count('id="samples"') == 1  # and the anchor exists once


def test_home_page(site_url, page):
    page.goto(f'{site_url}/index.html')
    assert 'cvbench' in page.inner_text('h1').lower()
    nav = page.inner_text('body')
    for section in ('Tutorials', 'API', 'Benchmarks'):
        assert section.lower() in nav.lower(), section
    assert page.query_selector('a[href="data.samples.html"]') is not None
    assert min(visible_images(page), default=1) > 0  # the report screenshot, if shown, is decoded
    assert page.errors == []
    shoot(page, 'home')


def test_api_page(site_url, page):
    page.goto(f'{site_url}/data.samples.html')
    assert page.query_selector('[id="samples"]') is not None  # `Samples`' entry: linkable
    body = page.inner_text('body')
    assert 'def Samples(' in body and 'The samples table' in body
    assert page.query_selector_all('.cell_output') != []  # examples show their results
    assert page.errors == []
    shoot(page, 'api')


def test_tutorial_page(site_url, page):
    page.goto(f'{site_url}/tutorials/quickstart.html')
    widths = visible_images(page)
    assert widths and min(widths) > 0, widths  # figures committed in the notebook are on the page, decoded
    assert page.query_selector_all('.cell_output table') != []  # and its tables
    assert page.errors == []
    shoot(page, 'tutorial')


def test_search_finds_a_symbol(site_url, page):
    page.goto(f'{site_url}/search.html?q=Samples')
    page.wait_for_selector('#search-results li', timeout=30_000)
    hits = page.eval_on_selector_all('#search-results li a', 'els => els.map(e => e.getAttribute("href"))')
    assert any(h.startswith('data.samples.html') for h in hits), hits
    page.goto(f'{site_url}/{hits[0]}')  # the hit opens
    assert page.errors == []


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


def test_a_run_report_renders(tiny_run, page):
    html = tiny_run / 'report' / 'report.html'
    page.goto(html.as_uri())
    widths = visible_images(page)
    assert len(widths) >= 3 and min(widths) > 0, widths  # confusion matrix, gallery, curves: all decoded
    assert 'Confusion matrix' in page.inner_text('body')
    assert page.errors == []
    shoot(page, 'report')
