"""The committed notebook outputs: every chapter, tutorial and explanation shows results; none carries noise.

Fast: reads the committed notebooks, executes nothing (`tools/run_notebooks.py --write` writes the outputs; `make
check-outputs` re-executes them). The unit tests at the end check the scrubber and these checks on synthetic
notebooks, and run one tiny notebook in a real kernel twice (same bytes both times).
"""
import base64, json, re, sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / 'tools'))
import run_notebooks as rn  # noqa: E402

NBS = ROOT / 'nbs'
CHAPTERS = sorted(NBS.glob("*.ipynb")) + sorted(NBS.glob("tutorials/*.ipynb"))
CHAPTERS += sorted(NBS.glob("explanations/*.ipynb"))
BENCHMARKS = sorted(NBS.glob('benchmarks/*.ipynb'))
ADDRESS = re.compile(r'\b0x[0-9a-fA-F]{6,}\b')


def _text(v) -> str:
    return ''.join(v) if isinstance(v, list) else str(v)


def output_texts(out: dict):
    "The text of one output: its stream text and its text-like data, not its images"
    if 'text' in out:
        yield _text(out['text'])
    for k, v in out.get('data', {}).items():
        if rn.is_text_mime(k):
            yield _text(v) if not isinstance(v, dict) else json.dumps(v)
    if out.get('output_type') == 'error':
        yield '\n'.join(out.get('traceback', []))


def noise(nb: dict, name: str = 'notebook', root: Path = ROOT) -> list[str]:
    "What a committed notebook's outputs must not carry, as messages naming the cell"
    probs = []
    forbidden = {str(root): 'the repo path', str(Path.home()): 'the home folder', '/tmp/': 'a temp path',
                 '\x1b[': 'an ANSI escape'}
    for i, c in enumerate(nb.get('cells', [])):
        where = f'{name}: cell {i} (id {c.get("id")})'
        for o in c.get('outputs', []):
            if o.get('output_type') == 'stream' and o.get('name') == 'stderr':
                probs.append(f'{where}: a stderr stream (warnings/logging belong to the test run, not the docs)')
            if o.get('output_type') == 'error':
                probs.append(f'{where}: an error output')
            if rn.is_progress(o):
                probs.append(f'{where}: a progress bar or widget')
            for t in output_texts(o):
                probs += [f'{where}: {what} in an output' for s, what in forbidden.items() if len(s) > 1 and s in t]
                if ADDRESS.search(t):
                    probs.append(f'{where}: a memory address ({ADDRESS.search(t).group()}) in an output')
    return probs + rn.size_problems(nb, name)


def visible_output_cells(path: Path, nb: dict) -> tuple[int, int, list[str]]:
    "(visible code cells that run, those with an output, hidden cells that still carry outputs)"
    plan = rn.cell_plan(path, *rn.run_flags(cuda=False))
    runs = [c for c, p in zip(nb['cells'], plan) if p['runs'] and p['keep']]
    hidden = [f'cell {i} (id {c.get("id")})' for i, (c, p) in enumerate(zip(nb['cells'], plan))
              if not p['keep'] and c.get('outputs')]
    return len(runs), sum(bool(c.get('outputs')) for c in runs), hidden


def _rel(p: Path) -> str:
    return str(p.relative_to(NBS))


@pytest.mark.parametrize('path', CHAPTERS, ids=_rel)
def test_chapter_shows_results(path):
    "Every chapter, tutorial and explanation page has committed outputs (benchmarks are exempt)"
    nb = json.loads(path.read_text(encoding='utf-8'))
    n_runs, n_out, hidden = visible_output_cells(path, nb)
    if n_runs == 0:
        pytest.skip('no visible code cell runs')
    assert n_out > 0, (f'{_rel(path)}: none of its {n_runs} visible code cells has a committed output: end a cell '
                       f'with a table head, a result or a small figure, then `make outputs` and commit')
    assert not hidden, f'{_rel(path)}: hidden cells carry outputs ({", ".join(hidden)}): run `make outputs`'


@pytest.mark.parametrize('path', CHAPTERS + BENCHMARKS, ids=_rel)
def test_outputs_carry_no_noise(path):
    "No stderr, machine paths, temp paths, memory addresses, progress bars, ANSI escapes; images and totals small"
    probs = noise(json.loads(path.read_text(encoding='utf-8')), _rel(path))
    assert not probs, '\n'.join(probs[:20]) + '\n(fix the chapter, then `make outputs`)'


# ------------------------------------------------------------------------------ the scrubber, on synthetic notebooks
def png(n_bytes: int = 100) -> str:
    return base64.b64encode(bytes(range(256)) * (n_bytes // 256) + b'x' * (n_bytes % 256)).decode()


def stream(text, name='stdout'):
    return dict(output_type='stream', name=name, text=text)


def result(**data):
    return dict(output_type='execute_result', execution_count=3, metadata={}, data=data)


def synthetic_nb(outputs: list[dict], source='x') -> dict:
    return dict(nbformat=4, nbformat_minor=5, metadata=dict(kernelspec=dict(name='python3', display_name='Python 3',
                                                                            language='python'), widgets={'a': 1}),
                cells=[dict(cell_type='code', id='c0', execution_count=3, metadata={}, source=source, outputs=outputs)])


def test_scrub_text_masks_machine_details():
    rules = rn.scrub_rules()
    s = (f'{ROOT}/runs/a.parquet and {Path.home()}/.cache/x and /tmp/tmpk3j_a9/data/x.png '
         '<Foo object at 0x7f3a2b1c9d00> \x1b[31mred\x1b[0m /tmpfoo')
    got = rn.scrub_text(s, rules)
    assert got == '…/runs/a.parquet and …/.cache/x and <tmp>/data/x.png <Foo object at 0x…> red /tmpfoo'
    assert rn.scrub_text(got, rules) == got  # idempotent


def test_scrub_outputs_drops_noise_and_keeps_results():
    rules = rn.scrub_rules()
    outs = [stream('loading\n'), stream('warning: deprecated\n', 'stderr'), stream(' 10%|#  \r 100%|####\r'),
            stream('done\n'), dict(output_type='display_data', metadata={}, data={'text/html': '<progress value=3>'}),
            dict(output_type='display_data', metadata={}, data={'application/vnd.jupyter.widget-view+json': {}}),
            result(**{'text/plain': f'{ROOT}/x at 0x7ffe12345678'}),
            dict(output_type='display_data', metadata={'image/png': {'width': 3}}, data={'image/png': png()},
                 transient={'display_id': 'a'})]
    got = rn.scrub_outputs(outs, rules)
    assert [o['output_type'] for o in got] == ['stream', 'execute_result', 'display_data']
    assert got[0]['text'] == 'loading\ndone\n'  # adjacent stdout chunks merged, the progress line gone
    assert got[1]['data']['text/plain'] == '…/x at 0x…' and got[1]['execution_count'] is None
    assert 'transient' not in got[2] and got[2]['data']['image/png'] == png()


def test_styler_ids_are_stable():
    "pandas `Styler` tables carry a random uuid in their ids: replaced by a hash of the table"
    import pandas as pd
    df = pd.DataFrame({'a': [1.0, 2.5]})
    a, b = (rn.scrub_outputs([result(**{'text/html': df.style.format('{:.1f}').to_html()})], [])[0] for _ in '12')
    assert a == b and 'T_' in a['data']['text/html']
    other = rn.scrub_outputs([result(**{'text/html': (df * 2).style.to_html()})], [])[0]['data']['text/html']
    assert other.split('T_')[1][:5] != a['data']['text/html'].split('T_')[1][:5]


def test_clean_form_is_what_nbdev_clean_writes(tmp_path):
    "The written text is a fixed point of `nbdev-clean`: `check-clean` never fights `make outputs`"
    from nbdev.clean import nbdev_clean
    nb = synthetic_nb([result(**{'text/plain': ['<A at 0x7f00aa11bb22>']}), stream(['a\n', 'b\n'])],
                      source=['x = 1\n', 'x'])
    nb['cells'][0]['metadata'] = {'execution': {'t': 1}, 'scrolled': True}
    text = rn.clean_form(nb)
    assert rn.clean_form(json.loads(text)) == text
    f = tmp_path / 'nb.ipynb'
    f.write_text(text, encoding='utf-8')
    nbdev_clean(fname=str(f))
    assert f.read_text(encoding='utf-8') == text
    written = json.loads(text)
    assert 'widgets' not in written['metadata'] and written['cells'][0]['metadata'] == {}
    assert written['cells'][0]['execution_count'] is None


def test_write_atomic_writes_only_changes(tmp_path):
    f = tmp_path / 'a.ipynb'
    assert rn.write_atomic(f, 'one') and f.read_text() == 'one'
    mtime = f.stat().st_mtime_ns
    assert not rn.write_atomic(f, 'one') and f.stat().st_mtime_ns == mtime
    assert rn.write_atomic(f, 'two') and f.read_text() == 'two'
    assert [p.name for p in tmp_path.iterdir()] == ['a.ipynb']  # no temp file left behind


def test_checks_catch_noise_and_size():
    "The committed-output checks fail on what the scrubber removes, and on big images and big notebooks"
    dirty = synthetic_nb([stream('oops\n', 'stderr'), stream(f'saved to {ROOT}/runs and /tmp/tmpab/x\n'),
                          result(**{'text/plain': 'id 0x7f3a2b1c9d00', 'text/html': '<progress value=1>'}),
                          stream('\x1b[1mbold\x1b[0m\n')])
    probs = '\n'.join(noise(dirty))
    for what in ['stderr', 'repo path', 'temp path', 'memory address', 'progress bar', 'ANSI']:
        assert what in probs, what
    clean = synthetic_nb(rn.scrub_outputs(dirty['cells'][0]['outputs'], rn.scrub_rules()))
    assert noise(clean) == []
    big = synthetic_nb([dict(output_type='display_data', metadata={}, data={'image/png': png(160_000)})])
    assert 'KB' in '\n'.join(noise(big)) and 'image/png' in noise(big)[0]
    many = synthetic_nb([dict(output_type='display_data', metadata={}, data={'image/png': png(100_000)})] * 7)
    assert len(noise(many)) == 1 and 'outputs total' in noise(many)[0]


def test_benchmarks_are_executed_not_written():
    assert rn.is_benchmark(Path('nbs/benchmarks/deploy.ipynb'))
    assert not rn.is_benchmark(Path('nbs/tutorials/01_quickstart.ipynb'))
    assert rn.target(ROOT / 'nbs/15_data.splits.ipynb', Path('/o')) == Path('/o/nbs/15_data.splits.ipynb')


# ------------------------------------------------------------------------------ one tiny notebook in a real kernel
CELLS = [
    ('import os, sys, tempfile, pathlib', None),
    ('#| hide\nprint("hidden output")', None),
    ('#| eval: false\nraise RuntimeError("eval: false cells must not run")', None),
    ('#| slow\nslow_ran = True', None),
    ('#| cuda\nraise RuntimeError("cuda cells run only with CUDA")', None),
    ('print(tempfile.mkdtemp(), pathlib.Path("tiny.ipynb").exists())\n'
     'sys.stderr.write("a warning\\n")\n'
     'os.environ["IN_TEST"], os.environ["OMP_NUM_THREADS"], slow_ran, object()', None),
    ('import matplotlib.pyplot as plt\nfig, ax = plt.subplots(figsize=(2, 1.5))\nax.plot([0, 1], [1, 0]);', None),
]


def tiny_nb(tmp_path: Path, cells=CELLS, name='tiny.ipynb') -> Path:
    nb = synthetic_nb([])
    nb['cells'] = [dict(cell_type='code', id=f'c{i}', execution_count=None, metadata={}, source=s, outputs=[])
                   for i, (s, _) in enumerate(cells)]
    nb['cells'].insert(0, dict(cell_type='markdown', id='md', metadata={}, source='# Tiny\n> a test notebook'))
    (tmp_path / name).write_text(rn.clean_form(nb), encoding='utf-8')
    return tmp_path / name


def test_run_in_a_real_kernel_twice_gives_the_same_bytes(tmp_path):
    f = tiny_nb(tmp_path)
    r = rn.run_one(str(f), write=True, cuda=False)
    assert r.ok and r.status == 'written', r.error
    first = f.read_bytes()
    nb = json.loads(first)
    outs = {c['id']: c.get('outputs', []) for c in nb['cells']}
    assert outs['c1'] == [] and outs['c2'] == [] and outs['c4'] == []  # hidden, eval: false, cuda
    text = ''.join(t for o in outs['c5'] for t in output_texts(o))
    assert text.startswith('<tmp> True\n') and "('1', '1', True, <object at 0x…>)" in text
    assert 'a warning' not in text
    assert [o['output_type'] for o in outs['c6']] == ['display_data'] and 'image/png' in outs['c6'][0]['data']
    assert noise(nb, root=ROOT) == []
    r2 = rn.run_one(str(f), write=True, cuda=False)
    assert r2.ok and r2.status == 'unchanged' and f.read_bytes() == first


def test_a_failing_cell_fails_its_notebook_not_the_batch(tmp_path, capsys):
    bad = tiny_nb(tmp_path, [('x = 1', None), ('def f():\n    return 1 / 0\nf()', None), ('y = 2', None)], 'bad.ipynb')
    good = tiny_nb(tmp_path, [('1 + 1', None)], 'good.ipynb')
    before = bad.read_bytes()
    assert rn.main([str(bad), str(good), '--write', '--jobs', '1']) == 1
    out, err = capsys.readouterr()
    assert 'FAILED: ' in err and 'bad.ipynb' in err and 'cell 2 (id c1)' in err and 'ZeroDivisionError' in err
    assert 'ok   ' in out and 'good.ipynb' in out and 'FAIL ' in out
    assert bad.read_bytes() == before  # a failed notebook is never written
    assert json.loads(good.read_text())['cells'][1]['outputs'][0]['data']['text/plain'] == ['2']
