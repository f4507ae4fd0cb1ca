"Shared fixtures: a tiny, fast run configuration and a helper that calls the real `cvbench` command."

import contextlib, io, os, subprocess, sys
from pathlib import Path
import pytest
from PIL import Image

CVBENCH = str(Path(sys.executable).parent / 'cvbench')


@pytest.fixture(scope='session')
def data_cache(tmp_path_factory) -> Path:
    "One cache of bundled datasets for the whole session (digits are written once)."
    return tmp_path_factory.mktemp('data')


@pytest.fixture
def tiny(data_cache, tmp_path) -> list[str]:
    "Overrides for a fast run: resnet10t on 16-pixel digits, one epoch, no W&B, outputs in `tmp_path`."
    return [
        f'runs_dir={tmp_path}/runs',
        f'reports_dir={tmp_path}/reports',
        f'data.cache_dir={data_cache}',
        'model.name=resnet10t',
        'preprocess.size=16',
        'train.epochs=1',
        'track.wandb=false',
    ]


def cli(*args, cwd=None, check=None) -> subprocess.CompletedProcess:
    "Run `cvbench ARGS`; `check` asserts the exit status."
    env = dict(os.environ, WANDB_MODE=os.environ.get('WANDB_MODE', 'offline'))
    r = subprocess.run([CVBENCH, *map(str, args)], cwd=cwd, capture_output=True, text=True, env=env, timeout=600)
    if check is not None:
        assert r.returncode == check, f'exit {r.returncode}\nstdout:\n{r.stdout[-3000:]}\nstderr:\n{r.stderr[-3000:]}'
    return r


def run_cli(*args) -> tuple[int, str, str]:
    "Exit status, stdout and stderr of `cvbench ARGS`, run in this process (a subprocess costs seconds per call)."
    from cvbench.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main([str(a) for a in args])
    return rc, out.getvalue(), err.getvalue()


def run_dir_of(r: subprocess.CompletedProcess) -> Path:
    "The run directory printed by `cvbench run`/`train`."
    line = next(l for l in r.stdout.splitlines() if l.startswith('run directory: '))
    return Path(line.split(': ', 1)[1])


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
