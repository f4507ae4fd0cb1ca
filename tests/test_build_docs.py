"""The docs site builder (`tools/build_docs.py`): page names, the `show_doc` adapter, link rewriting, the link checker,
and one small Sphinx build of a synthetic site. The real site is built and driven in a browser by test_docs_site."""

import json, sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / 'tools'))
import build_docs as bd  # noqa: E402

URL = 'https://cvbench.github.io/cvbench/'


def md(source):
    return {'cell_type': 'markdown', 'metadata': {}, 'source': source}


def code(source, outputs=()):
    return {'cell_type': 'code', 'execution_count': None, 'metadata': {}, 'outputs': list(outputs), 'source': source}


def result(mime, text):
    return {'output_type': 'execute_result', 'execution_count': 3, 'metadata': {}, 'data': {mime: text}}


def showdoc(name, doc, src_line=10):
    out = (f'---\n\n[source](https://github.com/cvbench/cvbench/blob/main/cvbench/x.py#L{src_line})'
           f'{{target="_blank" style="float:right; font-size:smaller"}}\n\n### {name}\n\n'
           f'```python\ndef {name}(a:int=1)->int:\n```\n\n*{doc}*')
    return code(f'#| echo: false\n#| output: asis\nshow_doc({name})', [result('text/markdown', out)])


def front(title, description, output_file=None):
    fm = f'---\ndescription: {description}\n' + (f'output-file: {output_file}\n' if output_file else '')
    return {'cell_type': 'raw', 'metadata': {}, 'source': fm + f'title: {title}\n\n---\n\n'}


def notebook(cells):
    return {'cells': cells, 'metadata': {'kernelspec': {'name': 'python3', 'display_name': 'Python 3',
                                                        'language': 'python'}}, 'nbformat': 4, 'nbformat_minor': 5}


def write_nb(path: Path, cells):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(notebook(cells)))


def test_page_names_follow_nbdev():
    assert bd.page_name(Path('10_data.samples.ipynb')) == 'data.samples.html'
    assert bd.page_name(Path('30a_evaluate.ledger.ipynb')) == 'evaluate.ledger.html'
    assert bd.page_name(Path('tutorials/01_quickstart.ipynb')) == 'tutorials/quickstart.html'
    assert bd.page_name(Path('index.ipynb')) == 'index.html'
    assert bd.page_name(Path('10_x.ipynb'), {'output-file': 'other.html'}) == 'other.html'
    assert bd.section_of(Path('index.ipynb')) == 'Home'
    assert bd.section_of(Path('00_core.ipynb')) == 'API'
    assert bd.section_of(Path('explanations/intervals.ipynb')) == 'Explanations'
    assert bd.section_of(Path('benchmarks/deploy.ipynb')) == 'Benchmarks'


def test_notebooks_skip_private_folders(tmp_path):
    for f in ['index.ipynb', '00_core.ipynb', 'tutorials/01_a.ipynb', '_hidden/x.ipynb', '.ipynb_checkpoints/y.ipynb',
              '_draft.ipynb']:
        (tmp_path / f).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / f).write_text('{}')
    found = [p.relative_to(tmp_path).as_posix() for p in bd.notebooks(tmp_path)]
    assert found == ['00_core.ipynb', 'index.ipynb', 'tutorials/01_a.ipynb']


def test_directives_are_split_from_code():
    d, src = bd.split_directives('#| echo: false\n#|output: asis\nshow_doc(f)\n#| not a directive after code')
    assert d == {'echo': 'false', 'output': 'asis'}
    assert src == 'show_doc(f)\n#| not a directive after code'


def test_showdoc_becomes_a_section_with_nbdev_anchor():
    out = bd._md_output(showdoc('Samples.__init__', 'Make one.'))
    text, anchor = bd.showdoc_markdown(out)
    assert anchor == 'samples.__init__'
    assert text.startswith('<div id="samples.__init__" class="nbdev-anchor"></div>')
    assert '### Samples.\\_\\_init\\_\\_' in text  # not bold
    assert '[source](https://github.com/cvbench/cvbench/blob/main/cvbench/x.py#L10){.sourcelink}' in text
    assert '---' not in text and 'float:right' not in text
    assert text.index('### ') < text.index('[source]')  # the link follows its heading


def site_with(pages):
    s = bd.Site(URL)
    s.pages = {k: set(v) for k, v in pages.items()}
    return s


def test_links_are_rewritten_to_relative_urls_that_resolve():
    s = site_with({'index.html': [], 'data.samples.html': ['samples', 'samples.save'], 'tutorials/quickstart.html': []})
    rw = bd.rewrite_links
    assert rw(f'[`Samples`]({URL}data.samples.html#samples)', 'index.html', s) == \
        '[`Samples`](data.samples.html#samples)'
    assert rw(f'[`Samples`]({URL}data.samples.html#samples)', 'tutorials/quickstart.html', s) == \
        '[`Samples`](../data.samples.html#samples)'
    # a method without its own show_doc links to its class; an undocumented symbol to its page
    assert rw(f'[`Samples.load`]({URL}data.samples.html#samples.load)', 'index.html', s) == \
        '[`Samples.load`](data.samples.html#samples)'
    assert rw(f'[`f`]({URL}data.samples.html#f)', 'index.html', s) == '[`f`](data.samples.html)'
    # a page that does not exist: the text stays, the link goes
    assert rw(f'see [`g`]({URL}gone.html#g).', 'index.html', s) == 'see `g`.'
    # links to notebooks become links to their pages; other links and images are untouched
    assert rw('[start](tutorials/01_quickstart.ipynb)', 'index.html', s) == '[start](tutorials/quickstart.html)'
    assert rw('[home](../index.ipynb)', 'tutorials/quickstart.html', s) == '[home](../index.html)'
    for keep in ['[x](https://example.com/a.html#b)', '![plot](plot.png)', '[y](#local)']:
        assert rw(keep, 'index.html', s) == keep


def test_code_cells_follow_quarto_directives():
    s = site_with({'index.html': []})
    hidden = bd.adapt_cell(code('#| include: false\nx = 1'), 'index.html', s)
    assert hidden is None
    quiet = bd.adapt_cell(code('#| echo: false\nx', [result('text/plain', '1')]), 'index.html', s)
    assert quiet['metadata']['tags'] == ['remove-input'] and quiet['source'] == 'x'
    stderr = {'output_type': 'stream', 'name': 'stderr', 'text': 'warning\n'}
    stdout = {'output_type': 'stream', 'name': 'stdout', 'text': 'ok\n'}
    c = bd.adapt_cell(code('print(1)', [stderr, stdout]), 'index.html', s)
    assert c['outputs'] == [stdout]
    assert bd.adapt_cell(md('<!-- WARNING: THIS FILE WAS AUTOGENERATED! DO NOT EDIT! -->'), 'index.html', s) is None


def synthetic_proc(root: Path) -> Path:
    "A `_proc/` as nbdev writes it: a home page, a module chapter with show_doc entries, a tutorial."
    proc = root / '_proc'
    start = md(f'Start with [`Samples`]({URL}data.samples.html#samples).')
    write_nb(proc / 'index.ipynb', [front('cvbench', 'A workbench.'), start])
    png = 'iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAABJRU5ErkJggg=='
    write_nb(proc / '10_data.samples.ipynb', [
        front('The samples table', 'One row per image.', 'data.samples.html'),
        md('<!-- WARNING: THIS FILE WAS AUTOGENERATED! DO NOT EDIT! -->'),
        md('## Why a contract'),
        showdoc('Samples', 'The samples table.'),
        showdoc('Samples.save', 'Save it.'),
        md(f'Save with [`Samples.save`]({URL}data.samples.html#samples.save); load with '
           f'[`Samples.load`]({URL}data.samples.html#samples.load).'),
        code('s = Samples()\ns', [result('text/markdown', f'| split | n |\n|---|---|\n| train | 2 |\n\n'
                                                          f'see [`Samples`]({URL}data.samples.html#samples)')]),
        code('plot()', [{'output_type': 'display_data', 'metadata': {}, 'data': {'image/png': png,
                                                                                  'text/plain': '<Figure>'}}]),
    ])
    write_nb(proc / 'tutorials' / '01_quickstart.ipynb', [
        front('Quickstart', 'Train and evaluate.'),
        md(f'Read the [`Samples`]({URL}data.samples.html#samples) chapter, or go [home](../index.ipynb).'),
        code('1 + 1', [result('text/plain', '2')]),
    ])
    return proc


def test_adapt_writes_a_sphinx_tree(tmp_path):
    src = tmp_path / 'src'
    (src / 'stale.ipynb').parent.mkdir(parents=True)
    (src / 'stale.ipynb').write_text('{}')
    pages = bd.adapt(synthetic_proc(tmp_path), src)
    assert sorted(pages) == ['data.samples.html', 'index.html', 'tutorials/quickstart.html']
    assert sorted(p.relative_to(src).as_posix() for p in src.rglob('*.ipynb')) == \
        ['data.samples.ipynb', 'index.ipynb', 'tutorials/quickstart.ipynb']
    home = json.loads((src / 'index.ipynb').read_text())
    sources = [c['source'] for c in home['cells']]
    assert sources[0] == '# cvbench' and sources[1] == '{.description}\nA workbench.'
    assert any(':caption: API' in s and 'data.samples' in s for s in sources)
    assert any(':caption: Tutorials' in s and 'tutorials/quickstart' in s for s in sources)
    assert not any(':caption: Benchmarks' in s for s in sources)  # no empty sections
    chapter = (src / 'data.samples.ipynb').read_text()
    assert 'show_doc(' not in chapter and 'AUTOGENERATED' not in chapter and URL not in chapter


def test_index_is_required(tmp_path):
    proc = synthetic_proc(tmp_path)
    (proc / 'index.ipynb').unlink()
    with pytest.raises(bd.DocsError, match='index.ipynb'):
        bd.adapt(proc, tmp_path / 'src')


def page(path: Path, body: str):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f'<!doctype html><html><body>{body}</body></html>')


def test_check_links_finds_missing_files_and_fragments(tmp_path):
    page(tmp_path / 'index.html', '<h1 id="top">x</h1><a href="a.html#sec">ok</a><a href="a.html#nope">bad</a>'
                                  '<a href="#top">ok</a><a href="#missing">bad</a><a href="#">ok</a>'
                                  '<a href="https://example.com/x.html#y">external</a><a href="mailto:a@b.c">m</a>'
                                  '<a href="javascript:void(0)">j</a><img src="img/p.png"><img src="img/gone.png">'
                                  '<link href="style.css?v=12"><a href="sub/">dir</a><a href="search.html?q=x">s</a>')
    page(tmp_path / 'a.html', '<section id="sec"></section><a href="../outside.html">escape</a>')
    page(tmp_path / 'sub' / 'index.html', '<a href="../index.html#top">up</a><a name="anchor"></a>'
                                          '<a href="#anchor">named</a>')
    page(tmp_path / 'search.html', '')
    (tmp_path / 'img').mkdir()
    (tmp_path / 'img' / 'p.png').write_bytes(b'png')
    (tmp_path / 'style.css').write_text('')
    assert sorted(bd.check_links(tmp_path)) == [
        'a.html: ../outside.html (no such file)',
        'index.html: #missing (no element with id "missing")',
        'index.html: a.html#nope (no element with id "nope")',
        'index.html: img/gone.png (no such file)',
    ]


def test_check_links_decodes_percent_escapes(tmp_path):
    page(tmp_path / 'a b.html', '<p id="x.y">t</p>')
    page(tmp_path / 'index.html', '<a href="a%20b.html#x.y">ok</a>')
    assert bd.check_links(tmp_path) == []


def test_synthetic_site_builds_with_sphinx_and_links_resolve(tmp_path):
    src, out = tmp_path / 'src', tmp_path / 'site'
    bd.adapt(synthetic_proc(tmp_path), src)
    warnings = bd.sphinx_build(src, out, tmp_path / 'doctrees', jobs=1)
    assert warnings == []
    assert bd.check_links(out) == []
    api = (out / 'data.samples.html').read_text()
    assert 'id="samples.save"' in api and 'class="sourcelink reference external"' in api
    assert api.count('id="samples"') == 1
    assert 'href="data.samples.html#samples"' in api  # Samples.load has no entry: its class instead
    assert '<img' in api and '<table' in api  # a figure and a markdown table output
    tut = (out / 'tutorials' / 'quickstart.html').read_text()
    assert 'href="../data.samples.html#samples"' in tut and 'href="../index.html"' in tut
    home = (out / 'index.html').read_text()
    for caption in ['Home', 'API', 'Tutorials']:
        assert f'<span class="caption-text">{caption}</span>' in home
    assert (out / 'search.html').exists() and (out / 'searchindex.js').exists()
    assert 'Samples' in (out / 'searchindex.js').read_text()


def test_processing_failures_name_the_notebook_and_the_cell(tmp_path):
    "A visible cell that needs a hidden one fails nbdev's docs processing: the build stops and says where."
    (tmp_path / 'pyproject.toml').write_text('[project]\nname = "tinylib"\nversion = "0.0.1"\n\n[tool.nbdev]\n')
    (tmp_path / 'tinylib').mkdir()
    (tmp_path / 'tinylib' / '__init__.py').write_text('')
    write_nb(tmp_path / 'nbs' / 'index.ipynb', [md('# tiny\n\n> A tiny project.')])
    write_nb(tmp_path / 'nbs' / '00_core.ipynb', [
        md('# Core\n\n> The core.'),
        code('#| default_exp core'),
        code('#| export\ndef f(x: int) -> int:\n    "Double `x`."\n    return 2 * x'),
        code('#| hide\nhidden = 1'),
        code('import os\nprint(hidden + f(1))'),  # imports and code: nbdev runs it in processing
    ])
    proc = tmp_path / '_proc'
    with pytest.raises(bd.DocsError) as e:
        bd.process(tmp_path / 'nbs', proc, jobs=1, root=tmp_path)
    msg = str(e.value)
    assert '1 notebook(s) failed' in msg and '00_core.ipynb' in msg and 'index.ipynb' not in msg
    assert "print(hidden + f(1))" in msg and "NameError: name 'hidden' is not defined" in msg
    assert (proc / 'index.ipynb').exists() and not (proc / '00_core.ipynb').exists()  # retried next time
