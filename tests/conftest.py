"""Shared fixtures: a tiny, fast run configuration, one trained tiny run for the tests that only read it, and helpers
that call the real `cvbench` command (a subprocess) or its `main` in this process (seconds cheaper per call)."""

import contextlib, io, logging, os, shutil, subprocess, sys
from pathlib import Path
import pytest
from PIL import Image

CVBENCH = str(Path(sys.executable).parent / 'cvbench')
XDIST_WORKER = os.environ.get('PYTEST_XDIST_WORKER')  # set in each worker of `pytest -n N`

if XDIST_WORKER:  # N workers on N cores: one thread each, for this process and every subprocess it starts
    for var in ('OMP_NUM_THREADS', 'MKL_NUM_THREADS', 'OPENBLAS_NUM_THREADS'):
        os.environ.setdefault(var, '1')
os.environ.setdefault('WANDB_MODE', 'offline')


@pytest.fixture(scope='session', autouse=True)
def _one_thread_per_worker():
    "Under pytest-xdist, torch computes on one thread per worker (two workers on two cores do not contend)."
    if XDIST_WORKER:
        import torch

        torch.set_num_threads(1)
    yield


@pytest.fixture(scope='session')
def data_cache(tmp_path_factory) -> Path:
    "One cache of bundled datasets for the whole session (digits are written once)."
    return tmp_path_factory.mktemp('data')


def tiny_overrides(root: Path, data_cache: Path) -> list[str]:
    "Overrides for a fast run: resnet10t on 16-pixel digits, one epoch, no W&B, outputs under `root`."
    return [
        f'runs_dir={root}/runs',
        f'reports_dir={root}/reports',
        f'data.cache_dir={data_cache}',
        'model.name=resnet10t',
        'preprocess.size=16',
        'train.epochs=1',
        'track.wandb=false',
    ]


@pytest.fixture
def tiny(data_cache, tmp_path) -> list[str]:
    "Overrides for a fast run: resnet10t on 16-pixel digits, one epoch, no W&B, outputs in `tmp_path`."
    return tiny_overrides(tmp_path, data_cache)


def cli(*args, cwd=None, check=None) -> subprocess.CompletedProcess:
    "Run `cvbench ARGS` in a subprocess (the real command); `check` asserts the exit status."
    env = dict(os.environ, WANDB_MODE=os.environ.get('WANDB_MODE', 'offline'))
    r = subprocess.run([CVBENCH, *map(str, args)], cwd=cwd, capture_output=True, text=True, env=env, timeout=600)
    if check is not None:
        assert r.returncode == check, f'exit {r.returncode}\nstdout:\n{r.stdout[-3000:]}\nstderr:\n{r.stderr[-3000:]}'
    return r


def run_cli(*args) -> tuple[int, str, str]:
    "Exit status, stdout and stderr of `cvbench ARGS`, run in this process (a subprocess costs seconds per call)."
    from cvbench.cli import main

    out, err = io.StringIO(), io.StringIO()
    level = logging.getLogger('cvbench').level  # `main` sets the package's log level; the next test gets it back
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                rc = main([str(a) for a in args])
            except SystemExit as e:  # argparse: --help, a bad option
                rc = e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
    finally:
        logging.getLogger('cvbench').setLevel(level)
    return rc, out.getvalue(), err.getvalue()


def cli_here(*args, cwd=None, check=None) -> subprocess.CompletedProcess:
    "`cli`'s answer from `cvbench.cli.main` run in this process (in `cwd`): same exit status, stdout and stderr."
    with contextlib.chdir(cwd or os.getcwd()):
        rc, out, err = run_cli(*args)
    if check is not None:
        assert rc == check, f'exit {rc}\nstdout:\n{out[-3000:]}\nstderr:\n{err[-3000:]}'
    return subprocess.CompletedProcess(['cvbench', *map(str, args)], rc, out, err)


def run_dir_of(r: subprocess.CompletedProcess) -> Path:
    "The run directory printed by `cvbench run`/`train`."
    line = next(l for l in r.stdout.splitlines() if l.startswith('run directory: '))
    return Path(line.split(': ', 1)[1])


@pytest.fixture(scope='session')
def tiny_run(tmp_path_factory, data_cache) -> Path:
    """One `cvbench run` of the tiny config (the real command, W&B offline, named `base`), trained once per session
    for every test that only reads a finished run; a test that writes into it works on `copy_run(tiny_run, ...)`."""
    root = tmp_path_factory.mktemp('tiny_run')
    r = cli('run', *tiny_overrides(root, data_cache), 'name=base', 'track.wandb=true', 'track.mode=offline',
            f'eval.regression_sets_dir={root}/sets', cwd=root, check=0)
    rd = run_dir_of(r)
    return rd if rd.is_absolute() else root / rd


def copy_run(rd: Path, dest: Path) -> Path:
    "A private copy of the run folder `rd` at `dest`, for a test that changes it."
    return Path(shutil.copytree(rd, dest, symlinks=True))


def make_imagefolder(root: Path, layout: dict, size=(12, 12)) -> Path:
    "Write small PNGs: `layout` maps a class folder to a number of images (each a different shade)."
    for folder, n in layout.items():
        (root / folder).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.new('RGB', size, ((i * 37) % 256, (i * 91) % 256, 60 if 'a' in folder else 200)).save(
                root / folder / f'{i}.png'
            )
    return root


@pytest.fixture(autouse=True)
def _keep_torch_threads():
    "Tests that load a torch Predictor or bench set torch's thread count for the process; put it back after each."
    import torch

    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)
