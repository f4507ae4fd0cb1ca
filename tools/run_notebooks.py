"""Execute notebooks in a real Jupyter kernel (nbclient) and, with `--write`, commit their outputs scrubbed.

    python tools/run_notebooks.py [PATHS...] [--write] [--jobs N] [--timeout S] [--out DIR] [--write-benchmarks]
                                  [--threads N]

Each notebook runs in its own `python3` kernel of this environment, with the notebook's folder as working directory
and `IN_TEST=1` (benchmarks at toy size, as under `nbdev-test`), one BLAS/OpenMP thread, `WANDB_MODE=offline`,
`PYTHONHASHSEED=0` and matplotlib's inline backend. The cells that run are those `nbdev-test --flags slow` runs:
`#| eval: false` cells and `#| cuda` cells (without CUDA) are skipped, `#| slow` cells run. A failing cell fails its
notebook (name, cell, traceback) and the exit code is 1; the other notebooks still run.

With `--write` the outputs are scrubbed (stderr, progress bars, widgets, outputs of hidden cells dropped; the repo,
home and temp folders and memory addresses masked) and written back in `nbdev-clean` form, atomically and only when
the content changed, so re-running an unchanged notebook changes nothing. Notebooks under a `benchmarks/` folder
are executed but not written (their content is timings; `--write-benchmarks` writes them, for `make bench`).
"""
from __future__ import annotations

import argparse, base64, hashlib, json, multiprocessing, os, re, sys, tempfile, time, traceback
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MAX_IMAGE_BYTES = 150_000  # one image output, decoded
MAX_OUTPUT_BYTES = 600_000  # all outputs of one notebook, as serialized JSON
HIDDEN_DIRECTIVES = ('hide', 'include', 'output')  # `#| hide`, `#| include: false`, `#| output: false`
ANSI_RE = re.compile(r'\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b\][^\x07]*\x07')
ADDRESS_RE = re.compile(r'\b0x[0-9a-fA-F]{6,16}\b')
STYLER_RE = re.compile(r'\bT_([0-9a-f]{5})(?=[_"\s])')


# ---------------------------------------------------------------------------------------------------- which cells run
def nbdev_config(path: Path):
    "nbdev's config of the project holding `path`, else of this repo (a notebook copied to a temp folder)"
    from nbdev.config import get_config, is_nbdev
    return get_config(path) if is_nbdev(path) else get_config(ROOT)


def cuda_available() -> bool:
    "Whether a CUDA device exists (`torch.cuda.is_available()`), without importing torch when there is no driver"
    if not (Path('/proc/driver/nvidia').exists() or Path('/dev/nvidiactl').exists()):
        return False
    try:
        import torch
        return bool(torch.cuda.is_available())
    except Exception:
        return False


def run_flags(cuda: bool) -> tuple[list[str], list[str]]:
    "The `(skip_flags, force_flags)` of `nbdev-test --flags slow` (plus `cuda` where CUDA exists)"
    skip = nbdev_config(ROOT).get('tst_flags', '') or ''
    skip = skip.split() if isinstance(skip, str) else list(skip)
    return skip, ['slow'] + (['cuda'] if cuda else [])


def cell_plan(path: Path, skip_flags: list[str], force_flags: list[str], text: str | None = None) -> list[dict]:
    "For each cell of the notebook at `path` (or its `text`): whether it runs and whether its outputs are kept"
    from nbdev.process import NBProcessor
    from nbdev.test import _skip_cell
    from nbdev.frontmatter import nb_frontmatter
    from fastcore.basics import str2bool
    from fastcore.nbio import dict2nb
    text = Path(path).read_text(encoding='utf-8') if text is None else text
    nb = NBProcessor(nb=dict2nb(json.loads(text)), rm_directives=False, process=True).nb
    skip = _skip_cell(nb, skip_flags, force_flags)
    skip_all = str2bool(nb_frontmatter(nb).get('skip_exec', False))
    plan = []
    for c in nb.cells:
        dirs = getattr(c, 'directives_', {}) or {}
        off = any(d in dirs and dirs[d] and dirs[d][0] in ('false', 'False') for d in HIDDEN_DIRECTIVES[1:])
        hidden = off or any(d in dirs for d in ('hide', 'export', 'exporti'))
        plan.append(dict(id=c.get('id'), runs=c.cell_type == 'code' and not skip_all and not skip(c),
                         keep=not hidden and 'cuda' not in dirs))
    return plan


# ---------------------------------------------------------------------------------------------------- scrubbing
def scrub_rules(nb_path: Path | None = None) -> list[tuple[str, str]]:
    "Literal replacements, longest first: the notebook's repo and this repo -> `…`, home -> `…`, temp dirs -> `<tmp>`"
    rules = {str(ROOT): '…'}
    if nb_path is not None:
        for p in Path(nb_path).resolve().parents:
            if (p / 'pyproject.toml').exists() or (p / '.git').exists():
                rules[str(p)] = '…'
                break
    home = str(Path.home())
    if len(home) > 1:
        rules.setdefault(home, '…')
    return sorted(rules.items(), key=lambda kv: -len(kv[0]))


def tmp_re() -> re.Pattern:
    "Temp folders plus their first (random) component: `/tmp/tmpab12cd/x.png` -> `<tmp>/x.png`"
    roots = {'/tmp', '/var/tmp', tempfile.gettempdir(), os.path.realpath(tempfile.gettempdir())}
    alt = '|'.join(re.escape(r.rstrip('/')) for r in sorted(roots, key=len, reverse=True))
    return re.compile(rf'(?:{alt})(?![\w.-])(?:/[^\s/\'"<>)\]]*)?')


def scrub_text(s: str, rules: list[tuple[str, str]] | None = None) -> str:
    "`s` without ANSI escapes, machine paths, temp folder names and memory addresses"
    s = ANSI_RE.sub('', s)
    for old, new in (rules if rules is not None else scrub_rules()):
        s = s.replace(old, new)
    s = tmp_re().sub('<tmp>', s)
    return ADDRESS_RE.sub('0x…', s)


def stable_styler_ids(html: str) -> str:
    "pandas `Styler` HTML with its random 5-hex `T_<uuid>` ids replaced by a hash of the table (distinct, stable)"
    for u in sorted(set(STYLER_RE.findall(html))):
        h = hashlib.sha1(html.replace(u, '').encode()).hexdigest()[:5]
        html = html.replace(f'T_{u}', f'T_{h}')
    return html


def is_progress(out: dict) -> bool:
    "A progress bar or widget output: fastprogress's `<progress>` HTML, a tqdm/ipywidgets view, a `\\r` stream"
    data = out.get('data', {})
    if any('widget' in k for k in data):
        return True
    html = data.get('text/html', '')
    html = ''.join(html) if isinstance(html, list) else html
    if '<progress' in html or 'fastprogress' in html or 'progress-bar' in html:  # the bar, or its style block
        return True
    if 'text/html' in data and not html.strip():  # what a `leave=False` bar leaves: an empty HTML output
        return True
    text = out.get('text', '')
    text = ''.join(text) if isinstance(text, list) else text
    return out.get('output_type') == 'stream' and '\r' in text


def is_text_mime(mime: str) -> bool:
    "Text outputs (scrubbed) as opposed to base64 images"
    return mime.startswith('text/') or mime.endswith(('json', 'markdown', 'latex', 'svg+xml'))


def _scrub_value(v, rules):
    if isinstance(v, list):
        return [scrub_text(x, rules) for x in v]
    return scrub_text(v, rules) if isinstance(v, str) else v


def scrub_output(out: dict, rules: list[tuple[str, str]]) -> dict | None:
    "`out` scrubbed, or None when it is dropped (stderr, progress bars, widgets)"
    if out.get('output_type') == 'stream' and out.get('name') == 'stderr':
        return None
    if is_progress(out):
        return None
    out = dict(out)
    out.pop('transient', None)
    if 'text' in out:
        out['text'] = _scrub_value(out['text'], rules)
    if 'data' in out:
        out['data'] = {k: _scrub_value(v, rules) if is_text_mime(k) else v for k, v in out['data'].items()}
        if isinstance(out['data'].get('text/html'), str):
            out['data']['text/html'] = stable_styler_ids(out['data']['text/html'])
    if 'execution_count' in out:
        out['execution_count'] = None
    return out


def _merge_streams(outs: list[dict]) -> list[dict]:
    "Adjacent stdout streams in one output, as Jupyter shows them (chunking depends on timing)"
    res = []
    for o in outs:
        if res and o.get('output_type') == 'stream' and res[-1].get('output_type') == 'stream' \
                and res[-1].get('name') == o.get('name'):
            prev = ''.join(res[-1]['text']) if isinstance(res[-1]['text'], list) else res[-1]['text']
            cur = ''.join(o['text']) if isinstance(o['text'], list) else o['text']
            res[-1] = dict(res[-1], text=prev + cur)
        else:
            res.append(o)
    return res


def scrub_outputs(outs: list[dict], rules: list[tuple[str, str]]) -> list[dict]:
    "The outputs of one cell, scrubbed"
    kept = [o for o in (scrub_output(o, rules) for o in outs) if o is not None]
    return _merge_streams(kept)


def size_problems(nb: dict, name: str = 'notebook') -> list[str]:
    "Images over `MAX_IMAGE_BYTES` and notebooks whose outputs exceed `MAX_OUTPUT_BYTES`, as messages"
    probs, total = [], 0
    for i, c in enumerate(nb.get('cells', [])):
        for o in c.get('outputs', []):
            total += len(json.dumps(o, ensure_ascii=False))
            for k, v in o.get('data', {}).items():
                if k.startswith('image/') and 'svg' not in k:
                    n = len(base64.b64decode(''.join(v) if isinstance(v, list) else v))
                    if n > MAX_IMAGE_BYTES:
                        probs.append(f'{name}: cell {i} ({c.get("id")}): {k} output is {n / 1e3:.0f} KB '
                                     f'(limit {MAX_IMAGE_BYTES / 1e3:.0f} KB): use a smaller figsize or dpi')
    if total > MAX_OUTPUT_BYTES:
        probs.append(f'{name}: outputs total {total / 1e3:.0f} KB (limit {MAX_OUTPUT_BYTES / 1e3:.0f} KB): '
                     'show a table head or one small figure, not full dumps or logs')
    return probs


def clean_form(nb: dict, path: Path = ROOT) -> str:
    "`nb` in the exact text form `nbdev-clean` writes (its `clean_nb` with the project's config)"
    from nbdev.clean import clean_nb
    from fastcore.nbio import nb2str
    cfg = nbdev_config(Path(path).resolve().parent)
    nb.get('metadata', {}).pop('widgets', None)
    clean_nb(nb, cfg.clear_all, cfg.get('allowed_metadata_keys') or [], cfg.get('allowed_cell_metadata_keys') or [],
             cfg.clean_ids, cfg.get('allowed_out_metadata_keys') or [])
    return nb2str(nb)


def write_atomic(path: Path, text: str) -> bool:
    "Write `text` to `path` through a temp file and a rename, only when it differs; True when written"
    path = Path(path)
    if path.exists() and path.read_text(encoding='utf-8') == text:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f'.{path.name}.', suffix='.tmp')
    try:
        with os.fdopen(fd, 'w', encoding='utf-8') as f:
            f.write(text)
        if path.exists():
            os.chmod(tmp, path.stat().st_mode & 0o777)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return True


# ---------------------------------------------------------------------------------------------------- execution
def kernel_env(threads: int = 1) -> dict:
    "The environment each kernel runs in (`threads` BLAS/OpenMP threads: 1, so two notebooks share two cores)"
    env = dict(os.environ)
    n = str(threads)
    env.update(IN_TEST='1', OMP_NUM_THREADS=n, MKL_NUM_THREADS=n, OPENBLAS_NUM_THREADS=n,
               WANDB_MODE='offline', WANDB_SILENT='true', PYTHONHASHSEED='0', TQDM_DISABLE='1',
               MPLBACKEND='module://matplotlib_inline.backend_inline', JUPYTER_PLATFORM_DIRS='1',
               PYDEVD_DISABLE_FILE_VALIDATION='1', PYTHONWARNINGS=env.get('PYTHONWARNINGS', ''))
    return env


@dataclass
class Result:
    path: str
    ok: bool = True
    seconds: float = 0.0
    status: str = ''  # written / unchanged / executed / failed
    error: str = ''
    problems: list = field(default_factory=list)


def _cell_label(nb, i: int) -> str:
    src = nb.cells[i].source.strip().splitlines()
    first = next((ln for ln in src if not ln.startswith('#|')), src[0] if src else '')
    return f'cell {i} (id {nb.cells[i].get("id")}): {first[:80]}'


def execute(path: Path, text: str, plan: list[dict], timeout: float, threads: int = 1):
    "Run the planned cells of the notebook `text` (at `path`) in a fresh kernel; returns `(nb, error message or '')`"
    import nbformat
    from nbclient import NotebookClient
    nb = nbformat.reads(text, as_version=4)
    client = NotebookClient(nb, kernel_name='python3', timeout=int(timeout), allow_errors=False,
                            store_widget_state=False, record_timing=False, iopub_timeout=10,
                            resources={'metadata': {'path': str(path.parent)}})
    with tempfile.TemporaryDirectory(prefix='cvbench-ipython-') as ipydir, \
            open(Path(ipydir) / 'kernel.log', 'w+b') as log:
        env = dict(kernel_env(threads), IPYTHONDIR=ipydir)
        err = _run_cells(client, nb, plan, path, timeout, env=env, cwd=str(path.parent), stdout=log, stderr=log)
        if err:
            log.seek(0)
            lines = log.read().decode(errors='replace').splitlines()
            tail = [ln for ln in lines if 'without encryption' not in ln][-20:]
            if tail:
                err += '\nthe kernel\'s own log (last lines):\n' + '\n'.join(tail)
    return nb, err


def _run_cells(client, nb, plan: list[dict], path: Path, timeout: float, **kernel_kw) -> str:
    "Execute the planned cells within `timeout` seconds in all; '' or the failure, naming the cell"
    from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError
    deadline = time.monotonic() + timeout
    with client.setup_kernel(**kernel_kw):
        for i, (cell, p) in enumerate(zip(nb.cells, plan)):
            if not p['runs']:
                continue
            left = deadline - time.monotonic()
            if left <= 0:
                return f'{path}: timed out after {timeout:.0f} s, before {_cell_label(nb, i)}'
            client.timeout = max(1, int(left))
            try:
                client.execute_cell(cell, i)
            except CellTimeoutError:
                return f'{path}: timed out ({timeout:.0f} s for the notebook) in {_cell_label(nb, i)}'
            except DeadKernelError as e:
                return f'{path}: the kernel died in {_cell_label(nb, i)}: {e}'
            except CellExecutionError as e:
                return f'{path}: {_cell_label(nb, i)} failed:\n{ANSI_RE.sub("", str(e))}'
    return ''


def is_benchmark(path: Path) -> bool:
    return 'benchmarks' in Path(path).parts[:-1]


def target(path: Path, out: Path | None) -> Path:
    "Where the outputs of `path` are written: in place, or under `out` with the path relative to the repo"
    if out is None:
        return path
    try:
        rel = path.resolve().relative_to(ROOT)
    except ValueError:
        rel = Path(path.name)
    return Path(out) / rel


def written_form(path: Path, text: str, nb, plan: list[dict]) -> dict:
    "The notebook `text` with the executed outputs of `nb`, scrubbed (cells that did not run keep no outputs)"
    raw = json.loads(text)
    rules = scrub_rules(path)
    assert len(raw['cells']) == len(nb.cells) == len(plan), f'{path}: cell count changed while executing'
    for c, e, p in zip(raw['cells'], nb.cells, plan):
        if c.get('cell_type') != 'code':
            continue
        outs = [dict(o) for o in e.get('outputs', [])] if p['runs'] and p['keep'] else []
        c['outputs'] = json.loads(json.dumps(scrub_outputs(outs, rules)))
        c['execution_count'] = None
    return raw


def run_one(path: str, write: bool = False, timeout: float = 600, out: str | None = None,
            write_benchmarks: bool = False, cuda: bool | None = None, threads: int = 1) -> Result:
    "Execute one notebook; with `write`, write its scrubbed outputs (unless it is a benchmark)"
    t0 = time.monotonic()
    p = Path(path)
    res = Result(str(path))
    try:
        text = p.read_text(encoding='utf-8')
        plan = cell_plan(p, *run_flags(cuda_available() if cuda is None else cuda), text=text)
        nb, err = execute(p.resolve(), text, plan, timeout, threads)
        if err:
            res.ok, res.status, res.error = False, 'failed', err
        elif write and (write_benchmarks or not is_benchmark(p)):
            new = written_form(p, text, nb, plan)
            res.problems = size_problems(new, str(path))
            if res.problems:
                res.ok, res.status = False, 'too big'
            elif out is None and p.read_text(encoding='utf-8') != text:
                res.ok, res.status = False, 'failed'
                res.error = f'{path}: the notebook changed on disk while it ran: not written, run it again'
            else:
                changed = write_atomic(target(p, out and Path(out)), clean_form(new, p))
                res.status = 'written' if changed else 'unchanged'
        else:
            res.status = 'executed'
    except Exception:
        res.ok, res.status, res.error = False, 'failed', f'{path}: {traceback.format_exc()}'
    res.seconds = time.monotonic() - t0
    return res


def find_notebooks(paths: list[str]) -> list[Path]:
    "Notebooks named or found under folders, skipping `_`/`.` names and `.notest` folders as `nbdev-test` does"
    from nbdev.doclinks import nbglob
    found = []
    for p in (paths or [str(nbdev_config(ROOT).nbs_path)]):
        p = Path(p)
        if p.is_dir():
            files = nbglob(p, as_path=True)
            found += [f for f in sorted(files) if not (f.parent / '.notest').exists()]
        elif p.suffix == '.ipynb' and p.exists():
            found.append(p)
        else:
            raise SystemExit(f'run_notebooks: {p} is neither a notebook nor a folder: give .ipynb files or folders')
    return list(dict.fromkeys(Path(os.path.relpath(f.resolve())) if f.resolve().is_relative_to(Path.cwd()) else f
                              for f in found))


def timing_table(results: list[Result]) -> str:
    w = max([len(r.path) for r in results] + [8])
    lines = [f'{"notebook":<{w}}  {"seconds":>7}  status']
    lines += [f'{r.path:<{w}}  {r.seconds:7.1f}  {r.status}' for r in sorted(results, key=lambda r: -r.seconds)]
    lines.append(f'{"total (sum)":<{w}}  {sum(r.seconds for r in results):7.1f}')
    return '\n'.join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument('paths', nargs='*', help='notebooks or folders (default: the nbs folder)')
    ap.add_argument('--write', action='store_true', help='write the scrubbed outputs back (nbdev-clean form)')
    ap.add_argument('--jobs', type=int, default=2, help='notebooks run at once (default 2)')
    ap.add_argument('--timeout', type=float, default=600, help='seconds per notebook (default 600)')
    ap.add_argument('--out', help='write the executed notebooks under this folder instead of in place')
    ap.add_argument('--write-benchmarks', action='store_true', help='also write notebooks under benchmarks/')
    ap.add_argument('--threads', type=int, default=1, help='OMP/MKL/OpenBLAS threads per kernel (default 1)')
    a = ap.parse_args(argv)
    files = find_notebooks(a.paths)
    if not files:
        print('run_notebooks: no notebooks found')
        return 0
    cuda = cuda_available()
    kw = dict(write=a.write or bool(a.out), timeout=a.timeout, out=a.out, write_benchmarks=a.write_benchmarks,
              cuda=cuda, threads=a.threads)
    t0 = time.monotonic()
    results = []

    def report(r: Result):
        results.append(r)
        print(f'{"ok  " if r.ok else "FAIL"} {r.path} ({r.seconds:.1f} s, {r.status})', flush=True)

    if a.jobs <= 1 or len(files) == 1:
        for f in files:
            report(run_one(str(f), **kw))
    else:
        ctx = multiprocessing.get_context('spawn')
        with ProcessPoolExecutor(max_workers=a.jobs, mp_context=ctx) as ex:
            futs = [ex.submit(run_one, str(f), **kw) for f in files]
            for fut in as_completed(futs):
                report(fut.result())
    failed = [r for r in results if not r.ok]
    sys.stdout.flush()
    for r in failed:
        print(f'\n{"=" * 100}\nFAILED: {r.path}\n{r.error}' + ''.join(f'\n{m}' for m in r.problems), file=sys.stderr)
    sys.stderr.flush()
    print('\n' + timing_table(results))
    print(f'wall {time.monotonic() - t0:.1f} s, {len(files)} notebook(s), {a.jobs} job(s), '
          f'{len(failed)} failed' + (f': {", ".join(r.path for r in failed)}' if failed else ''))
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
