"""Build the docs site offline: nbdev's own processing, then Sphinx + myst-nb, into static HTML in `_docs/`.

    python tools/build_docs.py [--out _docs] [--jobs 2] [--force]

Three steps, each a function below:
1. `process`: nbdev's `FilterDefaults` (what `nbdev.serve.proc_nbs` runs) turns every notebook of `nbs/` into
   `_proc/`: hidden and `#| export` cells removed, `show_doc` cells added and executed, backticked names linked.
   Notebooks run in parallel and are cached by modification time; a failing notebook is reported with its cell.
2. `adapt`: `_proc/` -> a Sphinx source tree (`build/docs-src/`): pages named as nbdev names them
   (`10_data.samples.ipynb` -> `data.samples.html`), a title and description from the front matter, `show_doc`
   outputs turned into real sections with nbdev's anchors (`#samples.save`), nbdev's absolute doc links rewritten
   to relative links that resolve, and a navigation of Home, Tutorials, Explanations, API, Benchmarks.
3. `sphinx_build` with myst-nb (execution off: the outputs are the ones committed in the notebooks) and the furo
   theme, then `check_links`: every internal link and fragment of the site must resolve, or `build` fails.

Why Sphinx + myst-nb: Quarto, which `nbdev-docs` needs, cannot be installed here (no wheel, no Debian or npm
package), so the site is rendered from nbdev's processed notebooks by a maintained, pure-Python renderer. Sphinx
is the most widely used Python docs generator (20 years, a large maintainer team, offline full-text search) and
myst-nb is the Executable Books project's notebook reader for it: it renders the committed outputs (tables, figures,
markdown reprs) without executing anything. mkdocs-material announces the end of its maintenance in 2027,
smalldocs is young with one maintainer, and Jupyter Book 2 fetches its template online. On a machine with Quarto,
`nbdev-docs` still works with `nbs/_quarto.yml` and `nbs/sidebar.yml`.
"""

import argparse, hashlib, html.parser, json, multiprocessing, os, posixpath, re, resource, shutil, subprocess, sys
import time, warnings
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from urllib.parse import unquote, urlsplit

import yaml
from docutils.nodes import make_id  # the section ids Sphinx writes

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / 'docs'  # conf.py, static files
SECTIONS = ('Tutorials', 'Explanations', 'API', 'Benchmarks')
FOLDERS = {'tutorials': 'Tutorials', 'explanations': 'Explanations', 'benchmarks': 'Benchmarks'}


class DocsError(Exception):
    "The docs site could not be built: a notebook failed processing, Sphinx failed, or links are broken."


# ---------------------------------------------------------------------------------------------------------------
# 1. nbdev's processing: nbs/ -> _proc/


def notebooks(nbs: Path) -> list[Path]:
    "The notebooks of `nbs` that make pages, as nbdev finds them (folders and files starting with `_` or `.` skipped)."
    found = []
    for p in sorted(nbs.rglob('*.ipynb')):
        rel = p.relative_to(nbs)
        if any(part[0] in '_.' for part in rel.parts):
            continue
        found.append(p)
    return found


def _process_one(job: tuple[str, str, str]) -> tuple[str, str | None, list[str], float]:
    "Run nbdev's docs processors on one notebook (in a worker); returns (notebook, error or None, warnings, seconds)."
    src, dst, root = job
    t0 = time.perf_counter()
    os.chdir(root)  # nbdev reads its config from the working directory
    from nbdev.processors import FilterDefaults
    from nbdev.serve_drv import main

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        try:
            main((Path(src), Path(dst), FilterDefaults))
            err = None
        except Exception as e:  # reported per notebook by `process`
            err = f'{type(e).__name__}: {e}'
    notes = [str(w.message).strip() for w in caught if 'Found cells containing imports' in str(w.message)]
    return src, err, notes, time.perf_counter() - t0


def _stamp(root: Path) -> str:
    "What every processed page depends on besides its notebook: the nbdev config, the symbol index, nbdev itself."
    import nbdev

    parts = [(root / 'pyproject.toml').read_text(), nbdev.__version__]
    modidx = root / 'cvbench' / '_modidx.py'
    if modidx.exists():
        parts.append(modidx.read_text())
    return hashlib.sha1('\0'.join(parts).encode()).hexdigest()


def process(nbs: Path, proc: Path, jobs: int = 2, force: bool = False, root: Path = ROOT) -> list[Path]:
    "Process the notebooks of `nbs` into `proc` with nbdev (cached); raises `DocsError` naming each failing notebook."
    stamp_file = proc / '.cvbench-docs-stamp'
    stamp = _stamp(root)
    if force or not stamp_file.exists() or stamp_file.read_text() != stamp:
        shutil.rmtree(proc, ignore_errors=True)
    proc.mkdir(parents=True, exist_ok=True)
    todo, outs = [], []
    for p in notebooks(nbs):
        d = proc / p.relative_to(nbs)
        outs.append(d)
        if not d.exists() or d.stat().st_mtime < p.stat().st_mtime:
            d.parent.mkdir(parents=True, exist_ok=True)
            todo.append((str(p), str(d), str(root)))
    failures, notes, took = [], [], []
    if todo:
        t0 = time.perf_counter()
        ctx = multiprocessing.get_context('spawn')
        with ProcessPoolExecutor(max_workers=max(1, min(jobs, len(todo))), mp_context=ctx) as ex:
            for src, err, warns, secs in ex.map(_process_one, todo):
                name = Path(src).relative_to(nbs).as_posix()
                took.append((secs, name))
                if err:
                    failures.append(f'{name}: {err}')
                notes += [f'{name}: {w}' for w in warns]
        slow = ', '.join(f'{n} {t:.0f} s' for t, n in sorted(took, reverse=True)[:3])
        print(f'docs: nbdev processed {len(todo)} notebook(s) in {time.perf_counter() - t0:.0f} s (slowest: {slow})')
    for n in notes:
        print(f'docs: WARNING {n}', file=sys.stderr)
    if failures:
        raise DocsError(f'{len(failures)} notebook(s) failed nbdev processing (fix the notebook; hidden cells '
                        'do not run in processing, so a visible cell that needs them fails):\n\n'
                        + '\n\n'.join(failures))
    stamp_file.write_text(stamp)
    return outs


# ---------------------------------------------------------------------------------------------------------------
# 2. The adapter: _proc/ -> a Sphinx source tree


def page_name(rel: Path, front: dict | None = None) -> str:
    "The page a notebook becomes, as nbdev names it: `10_data.samples.ipynb` -> `data.samples.html`."
    if front and front.get('output-file'):
        return (rel.parent / front['output-file']).as_posix()
    name = re.sub(r'^\d+[a-zA-Z0-9]*_', '', rel.name.lower())
    return (rel.parent / name).with_suffix('.html').as_posix()


def section_of(rel: Path) -> str:
    "The navigation section of a notebook at `rel` (relative to `nbs/`): Home, Tutorials, ..., API."
    if rel.as_posix() == 'index.ipynb':
        return 'Home'
    return FOLDERS.get(rel.parts[0], 'API') if len(rel.parts) > 1 else 'API'


def _src(cell: dict) -> str:
    s = cell.get('source', '')
    return ''.join(s) if isinstance(s, list) else s


def front_matter(nb: dict) -> dict:
    "The YAML front matter nbdev put in the first raw cell (title, description, output-file), or {}."
    for c in nb['cells'][:2]:
        s = _src(c).strip()
        if c['cell_type'] == 'raw' and s.startswith('---'):
            return yaml.safe_load(s.strip('-').strip()) or {}
    return {}


_re_directive = re.compile(r'^\s*#\|\s*([\w-]+)\s*:?\s*(.*?)\s*$')


def split_directives(source: str) -> tuple[dict, str]:
    "Quarto directives (`#| echo: false`) at the top of a code cell, and the code without them."
    lines = source.splitlines()
    d = {}
    while lines and _re_directive.match(lines[0]):
        k, v = _re_directive.match(lines[0]).groups()
        d[k] = v.strip('"\'')
        lines.pop(0)
    return d, '\n'.join(lines)


def is_false(v) -> bool:
    return str(v).lower() == 'false'


_re_heading = re.compile(r'^(#{2,6})\s+(.+?)\s*$', re.MULTILINE)
_re_source_link = re.compile(r'^\[source\]\(([^)\s]+)\)(\{[^}\n]*\})?\s*$', re.MULTILINE)


def anchor_id(symbol: str) -> str:
    "nbdev's anchor for a documented symbol (as in `_modidx.py`): the name, lower-cased."
    return symbol.strip('`').lower()


def showdoc_markdown(md: str) -> tuple[str, str | None]:
    "A `show_doc` output as a section: nbdev's anchor, an escaped heading, the source link after it; and the anchor."
    md = re.sub(r'^\s*---\s*\n', '', md)
    src = _re_source_link.search(md)
    if src:
        md = md[:src.start()] + md[src.end():]
    m = _re_heading.search(md)
    if not m:
        return md.strip(), None
    hashes, name = m.groups()
    anchor = anchor_id(name)
    link = f'\n\n[source]({src.group(1)}){{.sourcelink}}' if src else ''
    div = '' if make_id(name) == anchor else f'<div id="{anchor}" class="nbdev-anchor"></div>\n\n'
    head = f'{div}{hashes} {name.replace("_", chr(92) + "_")}{link}'
    return (md[:m.start()] + head + md[m.end():]).strip(), anchor


def is_showdoc(cell: dict) -> bool:
    if cell['cell_type'] != 'code':
        return False
    _, code = split_directives(_src(cell))
    return code.lstrip().startswith('show_doc(') and any(
        'text/markdown' in o.get('data', {}) for o in cell.get('outputs', []))


def _md_output(cell: dict) -> str:
    for o in cell.get('outputs', []):
        if 'text/markdown' in o.get('data', {}):
            return _src({'source': o['data']['text/markdown']})
    return ''


class Site:
    "Every page of the site and its anchors, to rewrite links so that they resolve."

    def __init__(self, doc_url: str = 'https://cvbench.github.io/cvbench/'):
        self.doc_url = doc_url.rstrip('/') + '/'
        self.pages: dict[str, set] = {}  # page -> anchor ids

    def target(self, page: str, frag: str) -> tuple[str, str] | None:
        "Where a link to `page#frag` should point: the anchor, the anchor of its class, the page, or None."
        if page not in self.pages:
            return None
        ids = self.pages[page]
        while frag and frag not in ids:
            frag = frag.rpartition('.')[0]
        return page, frag

    def rel(self, here: str, page: str, frag: str) -> str:
        url = posixpath.relpath(page, posixpath.dirname(here) or '.')
        return url + (f'#{frag}' if frag else '')


_re_md_link = re.compile(r'(!?)\[((?:[^\[\]]|\[[^\]]*\])*)\]\(([^()\s]+)\)')


def rewrite_links(md: str, here: str, site: Site) -> str:
    "Markdown links to the hosted docs or to notebooks -> relative links to pages of this site (unlinked if none)."

    def sub(m):
        bang, text, url = m.groups()
        if bang:
            return m.group(0)
        if url.startswith(site.doc_url):
            path, _, frag = url[len(site.doc_url):].partition('#')
        elif re.match(r'^[\w./-]+\.ipynb(#.*)?$', url):
            path, _, frag = url.partition('#')
            path = posixpath.normpath(posixpath.join(posixpath.dirname(here), path))
            path = page_name(Path(path))
        else:
            return m.group(0)
        if path.endswith('.md'):
            path = path[:-3] + '.html'
        found = site.target(path or 'index.html', frag)
        if found is None:
            return text
        return f'[{text}]({site.rel(here, *found)})'

    return _re_md_link.sub(sub, md)


def local_images(md: str) -> list[str]:
    "Relative image paths referenced by markdown `![](...)`."
    return [u for u in re.findall(r'!\[[^\]]*\]\(([^()\s]+)\)', md) if not re.match(r'^[a-z]+:', u)]


def _md_cell(source: str) -> dict:
    return {'cell_type': 'markdown', 'metadata': {}, 'source': source}


def title_cells(front: dict, fallback: str) -> list[dict]:
    "The page title and its one-line description, from nbdev's front matter."
    title = front.get('title') or fallback
    cells = [_md_cell(f'# {title}')]
    if front.get('description'):
        cells.append(_md_cell(f'{{.description}}\n{front["description"]}'))
    return cells


def adapt_cell(cell: dict, here: str, site: Site) -> dict | None:
    "One processed cell -> the cell Sphinx renders (None to drop it)."
    if cell['cell_type'] == 'raw':
        return None
    if cell['cell_type'] == 'markdown':
        s = _src(cell)
        if s.strip().startswith('<!-- WARNING: THIS FILE WAS AUTOGENERATED'):
            return None
        return _md_cell(rewrite_links(s, here, site))
    if is_showdoc(cell):
        md, _ = showdoc_markdown(_md_output(cell))
        return _md_cell(rewrite_links(md, here, site))
    d, code = split_directives(_src(cell))
    if is_false(d.get('include')):
        return None
    tags = [t for k, t in (('echo', 'remove-input'), ('output', 'remove-output')) if is_false(d.get(k))]
    outputs = [] if 'remove-output' in tags else [adapt_output(o, here, site) for o in cell.get('outputs', [])]
    outputs = [o for o in outputs if o is not None]
    if not code.strip() and not outputs:
        return None
    return {'cell_type': 'code', 'execution_count': None, 'metadata': {'tags': tags} if tags else {},
            'outputs': outputs, 'source': code}


def adapt_output(o: dict, here: str, site: Site) -> dict | None:
    "Drop stderr and widget views; link the markdown outputs."
    if o['output_type'] == 'stream' and o.get('name') == 'stderr':
        return None
    o = json.loads(json.dumps(o))
    data = o.get('data')
    if data is not None:
        data.pop('application/vnd.jupyter.widget-view+json', None)
        if 'text/markdown' in data:
            data['text/markdown'] = rewrite_links(_src({'source': data['text/markdown']}), here, site)
        if not data:
            return None
    if 'execution_count' in o:
        o['execution_count'] = None
    return o


def collect(proc: Path) -> tuple[Site, list[dict]]:
    "Read `proc`: each page's notebook, name, section and anchors."
    site, pages = Site(_doc_url()), []
    for p in notebooks(proc):
        rel = p.relative_to(proc)
        nb = json.loads(p.read_text())
        front = front_matter(nb)
        page = page_name(rel, front)
        anchors = {a for c in nb['cells'] if is_showdoc(c) for a in [showdoc_markdown(_md_output(c))[1]] if a}
        site.pages[page] = anchors
        pages.append(dict(rel=rel, nb=nb, front=front, page=page, section=section_of(rel)))
    return site, pages


def _doc_url() -> str:
    try:
        from nbdev.config import get_config

        cfg = get_config(ROOT)
        return f'{cfg.doc_host.rstrip("/")}{cfg.doc_baseurl.rstrip("/")}/'
    except Exception:  # a tree without nbdev config: tests on synthetic sites
        return 'https://cvbench.github.io/cvbench/'


def toctree_cells(pages: list[dict]) -> list[dict]:
    "Hidden toctrees (the sidebar) for the home page: Home, then one section each, API chapters in number order."
    cells = [_md_cell('```{toctree}\n:hidden:\n:caption: Home\n\nOverview <self>\n```')]
    for sec in SECTIONS:
        docs = [p for p in pages if p['section'] == sec]
        if not docs:
            continue
        entries = '\n'.join(p['page'][:-len('.html')] for p in sorted(docs, key=lambda p: p['rel'].as_posix()))
        cells.append(_md_cell(f'```{{toctree}}\n:hidden:\n:caption: {sec}\n:maxdepth: 1\n\n{entries}\n```'))
    return cells


def adapt_page(pg: dict, site: Site) -> dict:
    "One processed notebook -> the notebook Sphinx renders."
    here = pg['page']
    fallback = Path(here).stem
    cells = title_cells(pg['front'], fallback)
    cells += [c for c in (adapt_cell(c, here, site) for c in pg['nb']['cells']) if c is not None]
    meta = {k: v for k, v in pg['nb'].get('metadata', {}).items() if k in ('kernelspec', 'language_info')}
    meta.setdefault('kernelspec', {'display_name': 'Python 3', 'language': 'python', 'name': 'python3'})
    return {'cells': cells, 'metadata': meta, 'nbformat': 4, 'nbformat_minor': 5}


def write_if_changed(path: Path, text: str) -> bool:
    "Write `text` unless `path` has it already (Sphinx rebuilds only pages whose source changed)."
    if path.exists() and path.read_text() == text:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return True


def adapt(proc: Path, src: Path, nbs: Path | None = None) -> list[str]:
    "Write the Sphinx source tree `src` from nbdev's processed notebooks in `proc`; returns the page names."
    site, pages = collect(proc)
    if not any(p['section'] == 'Home' for p in pages):
        raise DocsError(f'no index.ipynb in {proc}: the home page comes from nbs/index.ipynb')
    keep = set()
    for pg in pages:
        nb = adapt_page(pg, site)
        if pg['section'] == 'Home':
            nb['cells'] += toctree_cells(pages)
        dest = src / (pg['page'][:-len('.html')] + '.ipynb')
        write_if_changed(dest, json.dumps(nb, indent=1, ensure_ascii=False) + '\n')
        keep.add(dest)
        for img in (local_images(''.join(_src(c) for c in nb['cells'] if c['cell_type'] == 'markdown'))
                    if nbs else []):
            f = nbs / pg['rel'].parent / img
            if f.is_file():
                d = dest.parent / img
                d.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(f, d)
                keep.add(d)
    for f in list(src.rglob('*')):  # pages whose notebook is gone
        if f.is_file() and f not in keep:
            f.unlink()
    return [p['page'] for p in pages]


# ---------------------------------------------------------------------------------------------------------------
# 3. Sphinx, and the link checker


def sphinx_build(src: Path, out: Path, doctrees: Path, jobs: int = 2) -> list[str]:
    "Render `src` to HTML in `out` with Sphinx (incremental); returns Sphinx's warnings, raises `DocsError` on error."
    if out.exists() and not (out / '.buildinfo').exists():
        shutil.rmtree(out)  # an older, non-Sphinx build
    warn_file = doctrees.parent / 'sphinx-warnings.txt'
    doctrees.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, '-m', 'sphinx', '-b', 'html', '-q', '-j', str(jobs), '-c', str(CONF), '-d', str(doctrees),
           '-w', str(warn_file), str(src), str(out)]
    r = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, 'PYTHONWARNINGS': 'ignore'})
    found = [w for w in warn_file.read_text().splitlines() if w.strip()] if warn_file.exists() else []
    if r.returncode != 0:
        raise DocsError(f'Sphinx failed (exit {r.returncode}):\n{r.stderr[-4000:]}')
    return found


class _Refs(html.parser.HTMLParser):
    "The ids and the internal references (href, src) of one HTML page."

    def __init__(self):
        super().__init__()
        self.ids, self.refs = set(), []

    def handle_starttag(self, tag, attrs):
        for k, v in attrs:
            if k in ('id', 'name') and v and (k == 'id' or tag == 'a'):
                self.ids.add(v)
            if k in ('href', 'src') and v is not None:
                self.refs.append(v)


_external = re.compile(r'^([a-zA-Z][a-zA-Z0-9+.-]*:|//)')


def _parse(page: Path) -> _Refs:
    p = _Refs()
    p.feed(page.read_text(errors='replace'))
    return p


def check_links(site: Path) -> list[str]:
    "Every internal href/src of every page of `site` that does not resolve to a file (and fragment): 'page: link'."
    site = Path(site).resolve()
    parsed = {p: _parse(p) for p in sorted(site.rglob('*.html'))}
    broken = []
    for page, refs in parsed.items():
        for ref in refs.refs:
            if not ref or _external.match(ref):
                continue
            parts = urlsplit(ref)
            path, frag = unquote(parts.path), unquote(parts.fragment)
            dest = page if not path else (page.parent / path).resolve()
            if path.endswith('/') or dest.is_dir():
                dest = dest / 'index.html'
            where = f'{page.relative_to(site).as_posix()}: {ref}'
            if not dest.is_relative_to(site) or not dest.is_file():
                broken.append(f'{where} (no such file)')
            elif frag and dest.suffix == '.html':
                ids = parsed[dest].ids if dest in parsed else _parse(dest).ids
                if frag not in ids:
                    broken.append(f'{where} (no element with id "{frag}")')
    return broken


# ---------------------------------------------------------------------------------------------------------------


def _abs(p: Path) -> Path:
    p = Path(p)
    return p if p.is_absolute() else ROOT / p


def cpu_seconds() -> float:
    "CPU seconds of this process and its finished children (workers, Sphinx), which the machine's load leaves alone."
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def build(out: Path = Path('_docs'), jobs: int = 2, force: bool = False, nbs: Path = Path('nbs'),
          proc: Path = Path('_proc'), src: Path = Path('build/docs-src')) -> Path:
    "Build the site into `out` (relative paths are taken from the repo root); raises `DocsError` on any failure."
    out, nbs, proc, src = _abs(out), _abs(nbs), _abs(proc), _abs(src)
    t0, c0 = time.perf_counter(), cpu_seconds()
    process(nbs, proc, jobs=jobs, force=force)
    t1, c1 = time.perf_counter(), cpu_seconds()
    pages = adapt(proc, src, nbs)
    warns = sphinx_build(src, out, src.parent / 'docs-doctrees', jobs=jobs)
    t2, c2 = time.perf_counter(), cpu_seconds()
    for w in warns:
        print(f'docs: sphinx WARNING {w}', file=sys.stderr)
    broken = check_links(out)
    if broken:
        raise DocsError(f'{len(broken)} broken internal link(s) in {out}:\n' + '\n'.join(broken))
    print(f'docs: {len(pages)} pages in {out}; nbdev processing {t1 - t0:.0f} s (CPU {c1 - c0:.0f} s), '
          f'Sphinx {t2 - t1:.0f} s (CPU {c2 - c1:.0f} s); {len(warns)} Sphinx warning(s), 0 broken links')
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--out', default='_docs', help='output folder (default _docs)')
    ap.add_argument('--jobs', type=int, default=2, help='parallel notebooks and Sphinx workers (default 2)')
    ap.add_argument('--force', action='store_true', help='reprocess every notebook (ignore the _proc cache)')
    ap.add_argument('--proc', default='_proc', help="nbdev's processed notebooks, a cache (default _proc)")
    ap.add_argument('--src', default='build/docs-src', help='the Sphinx source tree written (default build/docs-src)')
    a = ap.parse_args(argv)
    try:
        build(Path(a.out), jobs=a.jobs, force=a.force, proc=Path(a.proc), src=Path(a.src))
    except DocsError as e:
        print(f'docs: FAILED: {e}', file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    import build_docs  # workers unpickle `_process_one` from the importable module, not from `__main__`

    sys.exit(build_docs.main())
