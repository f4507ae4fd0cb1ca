"""What a user reads: reports render real Markdown, galleries never overlap, any script's class names draw without
warnings, numbers read as numbers, and a gate's decision opens the report (issue 10, items 6, 14, 17, 21)."""

import re, warnings
from html.parser import HTMLParser
from pathlib import Path

import matplotlib

matplotlib.use('agg')
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cvbench.evaluate.ledger import save_ledger
from cvbench.report import documents as D
from cvbench.report import plots as P

NON_LATIN = ['кошка', 'γάτα', 'قطة', 'बिल्ली', '猫', 'собака']


class _Tags(HTMLParser):
    "Counts start tags and collects the text of each `<li>` and each cell's `style`."

    def __init__(self):
        super().__init__()
        self.tags, self.items, self.cells, self._in_li = {}, [], [], False

    def handle_starttag(self, tag, attrs):
        self.tags[tag] = self.tags.get(tag, 0) + 1
        if tag == 'li':
            self._in_li = True
            self.items.append('')
        if tag in ('td', 'th'):
            self.cells.append(dict(attrs).get('style', ''))

    def handle_endtag(self, tag):
        if tag == 'li':
            self._in_li = False

    def handle_data(self, data):
        if self._in_li:
            self.items[-1] += data


def _tags(page: str) -> _Tags:
    t = _Tags()
    t.feed(page)
    return t


@pytest.fixture
def images(tmp_path) -> Path:
    "Twelve small images of three shades."
    for i in range(12):
        Image.new('RGB', (16, 16), (20 * i, 100, 200 - 10 * i)).save(tmp_path / f'{i}.png')
    return tmp_path


def _ledger(n: int = 48, wrong: float = 0.4, classes=('a', 'b', 'c'), seed: int = 0) -> pd.DataFrame:
    "A classification ledger whose first `wrong` fraction is mispredicted, with embeddings."
    rng = np.random.default_rng(seed)
    y = rng.integers(0, len(classes), n)
    pred = np.where(np.arange(n) < wrong * n, (y + 1) % len(classes), y)
    p = np.full((n, len(classes)), 0.1)
    p[np.arange(n), pred] = 0.8
    p /= p.sum(1, keepdims=True)
    return pd.DataFrame(dict(
        image_id=[str(i) for i in range(n)], path=[f'{i % 12}.png' for i in range(n)],
        label=[classes[i] for i in y], pred=[classes[i] for i in pred], confidence=p.max(1),
        loss=-np.log(p[np.arange(n), y]), **{f'prob_{c}': p[:, k] for k, c in enumerate(classes)},
        embedding=list(rng.normal(size=(n, 4)))))


# --- item 14: Markdown rendered by a real Markdown library --------------------------------------------------------

def test_html_keeps_lists_tables_code_and_links():
    "The old converter put a list on one line; markdown-it-py renders each item, tables, code and links."
    text = '- **run**: `demo`\n- **model**: `resnet18`\n- **data**: `digits`\n\nDocs: [cvbench](https://cvbench.dev).'
    table = pd.DataFrame(dict(cls=['cat', 'dog'], support=[12, 7], f1=[0.91, 0.5]))
    page = D.render_html('T', [D.Section('What was evaluated', text, [table])])
    t = _tags(page)
    assert t.tags.get('ul') == 1 and t.items == ['run: demo', 'model: resnet18', 'data: digits']
    assert t.tags.get('code') == 3 and t.tags.get('strong') == 3
    assert '<a href="https://cvbench.dev">cvbench</a>' in page
    # text columns left, numbers right: cls, support, f1 for the header and the two rows
    assert t.cells == ['text-align:left', 'text-align:right', 'text-align:right'] * 3


def test_html_embeds_figures_and_escapes_raw_html(tmp_path):
    fig, ax = plt.subplots(figsize=(1, 1))
    f = P.save_figure(fig, tmp_path / 'f.png')
    page = D.render_html('T', [D.Section('S', 'a class named <script>alert(1)</script>', figures=[f])])
    assert '<script>' not in page and '&lt;script&gt;' in page
    assert re.search(r'<img src="data:image/png;base64,[A-Za-z0-9+/=]{100,}" alt="f"', page)
    md = D.render_markdown('T', [D.Section('S', figures=[f])], tmp_path)
    assert '![f](f.png)' in md
    figs = []  # twelve different figures (placeholders 1 and 11 must not be confused), each embedded in its place
    for i in range(12):
        fig, ax = plt.subplots(figsize=(1, 1))
        ax.set_title(str(i))
        figs.append(P.save_figure(fig, tmp_path / f'fig{i}.png'))
    page = D.render_html('T', [D.Section(f'S{i}', figures=[f]) for i, f in enumerate(figs)])
    assert re.findall(r'src="([^"]+)"', page) == [P.png_data_uri(f) for f in figs]


def _overlaps(fig) -> list:
    "Pairs (caption i, box j) that intersect: a caption against other captions and against every image."
    fig.canvas.draw()
    r = fig.canvas.get_renderer()
    axs = [ax for ax in fig.axes if ax.get_title()]
    caps = [ax.title.get_window_extent(r) for ax in axs]
    boxes = [ax.get_window_extent(r) for ax in axs]
    fw, fh = fig.bbox.width, fig.bbox.height

    def hit(a, b):
        return a.x0 < b.x1 - 0.5 and b.x0 < a.x1 - 0.5 and a.y0 < b.y1 - 0.5 and b.y0 < a.y1 - 0.5

    bad = [(i, j) for i, c in enumerate(caps) for j in range(len(axs))
           if (j != i and (hit(c, caps[j]) or hit(c, boxes[j]))) or hit(c, boxes[i])]
    return bad + [(i, 'outside') for i, c in enumerate(caps) if c.x0 < -1 or c.x1 > fw + 1 or c.y1 > fh + 1]


@pytest.mark.parametrize('ncols,group', [(8, 1), (4, 1), (6, 2)])
def test_gallery_captions_never_overlap(images, ncols, group):
    "Two-line captions with a long detail (what `data check` writes) used to run into each other."
    caps = [f'label_{i} -> pred_{i}\npHash within 3 bits of train/some_folder/a_long_file_name_{i:04d}.png'
            for i in range(12)]
    caps[3] = 'x' * 200  # one word longer than any line
    fig = P.plot_gallery([images / f'{i}.png' for i in range(12)], caps, ncols=ncols, group=group)
    assert _overlaps(fig) == []
    assert all(len(ax.get_title().split('\n')) <= 3 for ax in fig.axes)
    plt.close(fig)


def test_duplicates_are_shown_side_by_side(images, monkeypatch):
    "Each duplicate-type issue is drawn as (image, the image it matches) pairs; other issues as single images."
    calls = []
    real = P.plot_gallery
    def spy(paths, caps, **kw):
        calls.append((paths, kw))
        return real(paths, caps, **kw)

    monkeypatch.setattr(D, 'plot_gallery', spy)
    iss = pd.DataFrame(dict(
        image_id=['1', '2', '3', '4'], path=['1.png', '2.png', '3.png', '4.png'],
        split=['valid', 'valid', 'train', 'test'],
        label='a', issue=['near_duplicate', 'exact_duplicate', 'dark', 'leakage'],
        severity=['warning', 'warning', 'info', 'error'], score=[0.9, 1.0, 0.5, 1.0],
        details=['pHash within 2 bits of 5.png', 'same pixels as 6.png', 'dim', 'duplicate of train image 7.png']))
    D.quality_sections(iss, images, images / 'q', {})
    kinds = {Path(p[0]).name: (k.get('group', 1), [Path(x).name for x in p]) for p, k in calls}
    assert kinds == {'4.png': (2, ['4.png', '7.png']), '1.png': (2, ['1.png', '5.png']),
                     '2.png': (2, ['2.png', '6.png']), '3.png': (1, ['3.png'])}
    fig = real([images / '1.png', images / '5.png'] * 2, ['a', 'b'] * 2, ncols=6, group=2)
    x = sorted(ax.get_position().x0 for ax in fig.axes)
    w = fig.axes[0].get_position().width
    assert x[1] - x[0] < 1.15 * w < x[2] - x[1]  # pair members adjacent, a gap between pairs
    plt.close(fig)


def test_issue_summary_and_sections_by_severity(images):
    "Errors first, then warnings, then info; within a level the most frequent first."
    rows = [('dark', 'info')] * 5 + [('unreadable', 'error')] + [('near_duplicate', 'warning')] * 2 + \
        [('leakage', 'error')] * 3 + [('blurry', 'info')] * 2
    n = len(rows)
    iss = pd.DataFrame(dict(image_id=[str(i) for i in range(n)], path=[f'{i % 12}.png' for i in range(n)],
                            split='train', label='a', issue=[r[0] for r in rows], severity=[r[1] for r in rows],
                            score=1.0, details=''))
    iss = iss.sample(frac=1, random_state=0)
    order = ['leakage', 'unreadable', 'near_duplicate', 'dark', 'blurry']
    counts = D.issue_counts(iss)
    assert list(counts.issue) == order and list(counts.images) == [3, 1, 2, 5, 2]
    secs = D.quality_sections(iss, images, images / 'q', {})
    assert [s.title.split(' ')[0] for s in secs[2:]] == order
    md = D.render_markdown('q', secs, images / 'q')
    summary = md[md.index('## Summary'):md.index('## leakage')]
    assert [summary.index(f'| {k} ') for k in order] == sorted(summary.index(f'| {k} ') for k in order)


def test_clusters_table_has_no_always_true_column(images):
    "`ranked` was True on every shown row; the report drops it and says in words which clusters come last."
    from types import SimpleNamespace
    from cvbench.evaluate.errors import cluster_failures

    ledger = _ledger()
    cl, of = cluster_failures(ledger, 4, min_size=14)
    assert cl.ranked.any() and not cl.ranked.all()  # the evaluation keeps the column; the report does not show it
    (images / 'r').mkdir()
    ev = SimpleNamespace(clusters=cl, cluster_of=of)
    sec = D._sec_clusters(ev, dict(ledger=ledger, root=images, out=images / 'r'))
    assert 'ranked' not in sec.tables[0].columns
    assert list(sec.tables[0].columns[:3]) == ['cluster', 'n', 'errors']
    assert f'{int((~cl.ranked).sum())} cluster(s) too small to rank are listed last' in sec.text


# --- item 21: any script draws, quietly ---------------------------------------------------------------------------

def test_non_latin_class_names_draw_without_warnings(images, tmp_path):
    "A confusion matrix, gallery, curves and slices with non-Latin names raise no glyph warning (8 a command before)."
    cm = np.arange(len(NON_LATIN) ** 2).reshape(len(NON_LATIN), -1)
    x = np.linspace(0, 1, 20)
    slices = pd.DataFrame(dict(column='site', value=NON_LATIN[:2], n=[40, 8], too_small=[False, True],
                               accuracy=[0.9, 0.7], accuracy_low=[0.85, 0.4], accuracy_high=[0.95, 0.9]))
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        P.save_figure(P.plot_confusion_matrix(cm, NON_LATIN), tmp_path / 'cm.png')
        P.save_figure(P.plot_gallery([images / '0.png'] * 6, [f'{c} -> {c}' for c in NON_LATIN]), tmp_path / 'g.png')
        P.save_figure(P.plot_curves({c: (x, x ** 0.5, None) for c in NON_LATIN}), tmp_path / 'c.png')
        P.save_figure(P.plot_slices(slices), tmp_path / 's.png')
        fig, ax = plt.subplots()  # a figure made elsewhere, saved by `save_figure`
        ax.set_title(' '.join(NON_LATIN))
        P.save_figure(fig, tmp_path / 'o.png')
    assert all((tmp_path / f'{n}.png').stat().st_size > 1000 for n in ('cm', 'g', 'c', 's', 'o'))


def test_a_font_with_the_glyphs_is_picked():
    "With a default font that lacks Cyrillic, the search finds an installed one that has it; Latin needs none."
    from matplotlib import font_manager

    math = sorted({f.name for f in font_manager.fontManager.ttflist if 'Math' in f.name})
    if not math:
        pytest.skip('no font without Cyrillic installed to test the search with')
    cyr = {ord(c) for c in 'жук'}
    assert not cyr <= P._charmap(P._default_font(math[:1]))
    extra = P.fonts_for('жук', math[:1])
    assert extra and cyr <= P._charmap(font_manager.findfont(extra[0]))
    assert P.fonts_for('plain ASCII', math[:1]) == []
    with plt.rc_context({'font.family': math[:1]}), P.script_fonts(['жук']):
        assert plt.rcParams['font.family'] == math[:1] + extra


def test_cjk_uses_an_installed_cjk_font_when_there_is_one():
    "Where a CJK font is installed (e.g. Noto Sans CJK), `fonts_for` names it first; never the placeholder font then."
    from matplotlib import font_manager

    real = [f.name for f in font_manager.fontManager.ttflist
            if ord('猫') in P._charmap(f.fname) and not f.name.startswith('Last Resort')]
    got = P.fonts_for('猫')
    if real:
        assert got[0] in real
    else:  # nothing, or matplotlib's placeholder font, which draws a labelled box without a warning
        assert got in ([], ['Last Resort High-Efficiency'])


# --- item 17: numbers that look right ----------------------------------------------------------------------------

def test_format_value_reads_like_the_number():
    cases = {np.int64(126): '126', 20.0: '20', np.float32(20.0): '20', -0.0: '0', -1e-17: '0', 0.93456: '0.9346',
             -0.031: '-0.0310', 6.9e-06: '6.9e-06', np.nan: '', None: '', 'cat': 'cat', float('inf'): 'inf'}
    assert {k: D.format_value(k) for k in cases} == cases
    assert [D.format_value(v, 'passed') for v in (True, np.bool_(False))] == ['pass', 'FAIL']
    assert D.format_value(True, 'too_small') == 'yes'


def test_format_value_against_rounding(tmp_path):
    "Every formatted float, read back, is the value rounded to 4 decimals (or to 2 significant digits if tiny)."
    rng = np.random.default_rng(1)
    vals = np.r_[rng.normal(0, 1, 500), rng.normal(0, 1e-5, 200), rng.integers(-1000, 1000, 100).astype(float)]
    for v in vals:
        s = D.format_value(v)
        assert 'e' in s or float(s) == round(v, 4) or float(s) == 0 and abs(v) < 1e-12, (v, s)
        if 'e' in s:
            assert float(s) == float(f'{v:.2g}')


def test_datasheet_numbers(tmp_path):
    "The datasheet printed `np.int64(126)` and widths as `20.0000`."
    from cvbench.data.formats import read_imagefolder
    from cvbench.data.quality import scan_files, find_issues

    for c in ('cat', 'dog'):
        (tmp_path / 'd' / c).mkdir(parents=True)
        for i in range(6):
            Image.new('RGB', (20, 12), (30 * i, 50 if c == 'cat' else 150, 90)).save(tmp_path / 'd' / c / f'{i}.png')
    s = read_imagefolder(tmp_path / 'd')
    scan = scan_files(s.paths(), 1)
    sheet = D.datasheet(s, scan, find_issues(s, scan), 'd')
    assert 'np.' not in sheet and '20.0000' not in sheet and '12.0000' not in sheet
    assert re.search(r'\| width +\| +20 \| +20 \| +20 \| +20 \| +20 \|', sheet)
    assert 'Formats: PNG 12' in sheet


def test_gate_tables_read_pass_fail_and_no_minus_zero():
    from cvbench.evaluate.compare import compare

    led = _ledger(wrong=0.2)
    c = compare(led, led.copy(), ['a', 'b', 'c'], gate=dict(metrics=dict(accuracy=dict(max_drop=0.0))),
                n_resamples=50)
    assert c.checks.limit.iloc[0] == 0 and str(c.checks.limit.iloc[0]) == '-0.0'  # what compare hands over
    md = D.table_markdown(c.checks)
    row = [x.strip() for x in md.splitlines()[2].split('|')[1:-1]]
    assert row[:4] == ['metric accuracy', '0', '0', 'pass'] and '-0.0000' not in md and 'True' not in md


# --- item 6: the gate's decision opens the report ----------------------------------------------------------------

def test_report_opens_with_the_gate_decision(images, tmp_path, monkeypatch):
    "`report --baseline --gate` through `report_run` on two ledger files: FAIL and the failing rule come first."
    from cvbench.runs import report_run

    monkeypatch.chdir(tmp_path)
    classes = ['a', 'b', 'c']
    base, cand = _ledger(wrong=0.0), _ledger(wrong=0.3)
    for name, led in (('base', base), ('cand', cand)):
        save_ledger(led, tmp_path / f'{name}.parquet', classes, image_root=str(images))
    gate = tmp_path / 'gate.yaml'
    gate.write_text('metrics:\n  accuracy: {max_drop: 0.01}\n  log_loss: {max_drop: 1.0}\n')
    files = report_run(tmp_path / 'cand.parquet', baseline=tmp_path / 'base.parquet', gate=gate)
    md = Path(files['markdown']).read_text()
    heads = re.findall(r'^## (.+)$', md, flags=re.M)
    assert heads[:3] == ['Release decision', 'What was evaluated', 'Headline metrics']
    first = md[md.index('## Release decision'):md.index('## What was evaluated')]
    rules = first.split('|')[0]  # the text above the checks table
    assert '**FAIL**: 1 of 2 rule(s)' in rules and '- metric accuracy:' in rules and 'log_loss' not in rules
    page = Path(files['html']).read_text()
    assert page.index('FAIL') < page.index('Headline metrics')
