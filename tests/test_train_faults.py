"Training output and faults: progress in logs, the epoch loss, epoch counts, failing tracking, kill -9, ENOSPC."

import errno, logging, os, random, re, signal, sys, time
from pathlib import Path
import numpy as np, pandas as pd, pytest, torch
from safetensors.torch import load_file, save_file
from conftest import make_imagefolder
from fastai.vision.all import Callback
from cvbench.core import CvbenchError, RunDir, load_config
from cvbench.models import create_model
from cvbench.train.learner import load_resume_state, prepare_samples, progress_mode, train
from cvbench.train.tracking import Tracker, WandbEpochLogger, start_tracking

ARCH = 'test_resnet'  # timm's tiny test network: 1.5 MB of weights, a few milliseconds a batch


def _overrides(root: Path, tmp: Path, epochs: int = 3) -> list[str]:
    return [f'data.source={root}', f'data.cache_dir={tmp}/cache', f'runs_dir={tmp}/runs', f'model.name={ARCH}',
            'preprocess.size=16', f'train.epochs={epochs}', 'train.batch_size=8', 'train.device=cpu',
            'train.augment=false', 'track.wandb=false']


@pytest.fixture(scope='module', autouse=True)
def one_thread():
    "One torch thread: the 2 shared cores train these tiny models faster without thread contention."
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope='module')
def folder(tmp_path_factory) -> Path:
    "24 tiny PNGs in two classes: 19 train, 5 valid, two batches of 8 an epoch."
    return make_imagefolder(tmp_path_factory.mktemp('faults') / 'images', {'a': 12, 'b': 12})


@pytest.fixture(scope='module')
def samples(folder, tmp_path_factory):
    return prepare_samples(load_config(overrides=_overrides(folder, tmp_path_factory.mktemp('s'))))


def _cfg(folder, tmp_path, epochs=3):
    return load_config(overrides=_overrides(folder, tmp_path, epochs))


def _in_child(fn) -> int:
    "Run `fn` in a forked child (no imports to pay again); its exit code: 0 if `fn` returned, 1 if it raised."
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            fn()
            code = 0
        finally:
            os._exit(code)
    return pid


def _wait(pid) -> int:
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


class BatchLosses(Callback):
    "An independent record of each training batch's mean loss and size, per epoch."

    def __init__(self):
        self.epochs = []

    def before_epoch(self):
        self.epochs.append([])

    def after_batch(self):
        if self.training:
            self.epochs[-1].append((self.loss.item(), len(self.yb[0])))


# --- item 16: progress output ---------------------------------------------------------------------------------------


def test_progress_mode_follows_the_terminal(monkeypatch):
    monkeypatch.setattr(sys.stdout, 'isatty', lambda: True, raising=False)
    assert progress_mode() == 'bar'
    monkeypatch.setattr(sys.stdout, 'isatty', lambda: False, raising=False)
    assert progress_mode() == 'log'
    assert progress_mode('quiet') == 'quiet'
    with pytest.raises(CvbenchError, match='not one of'):
        progress_mode('verbose')


def _cli_redirected(args: list[str], out: Path) -> int:
    "`cvbench ARGS > out 2>&1` in a forked child (the CLI's own `main`, without paying its imports again)."
    pid = os.fork()
    if pid == 0:
        code = 3
        try:
            from cvbench.cli import main

            fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            sys.stdout, sys.stderr = open(1, 'w', closefd=False), open(2, 'w', closefd=False)
            logging.root.handlers.clear()  # pytest's; the CLI installs its own
            code = main(args)
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    return _wait(pid)


def test_redirected_training_log_has_one_line_per_epoch(folder, tmp_path):
    "`cvbench train > file 2>&1`: no carriage return, no bar, exactly one line per epoch."
    out = tmp_path / 'train.log'
    code = _cli_redirected(['train', *_overrides(folder, tmp_path, epochs=2)], out)
    text = out.read_text()
    assert code == 0, text[-3000:]
    assert '\r' not in text and '\x1b' not in text
    lines = [l for l in text.splitlines() if re.search(r'\bepoch \d+/\d+\b', l)]
    assert [re.search(r'epoch (\d+/\d+)', l).group(1) for l in lines] == ['1/2', '2/2'], text
    hist = pd.read_csv(next((tmp_path / 'runs').iterdir()) / 'history.csv')
    for line, loss in zip(lines, hist.train_loss):  # the log shows history.csv's numbers
        assert f'train_loss {loss:.4f}' in line
    assert len(text) < 4000, text  # the whole log of a 2-epoch run stays small


def test_quiet_logs_nothing(folder, samples, tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger='cvbench'):
        train(_cfg(folder, tmp_path, 1), samples, tmp_path / 'run', progress='quiet')
    assert not [r for r in caplog.records if 'epoch 1/1' in r.getMessage()]


# --- item 17: the epoch's train loss, and epochs as the total ----------------------------------------------------


def test_train_loss_is_the_epoch_mean_everywhere(folder, samples, tmp_path, caplog):
    "history.csv, fastai's table (`recorder.values`) and the log line all show the batch-size-weighted epoch mean."
    rec = BatchLosses()
    with caplog.at_level(logging.INFO, logger='cvbench'):
        learn = train(_cfg(folder, tmp_path, 3), samples, tmp_path / 'run', cbs=[rec], progress='log')
    expected = [np.average([l for l, _ in ep], weights=[n for _, n in ep]) for ep in rec.epochs]
    hist = pd.read_csv(tmp_path / 'run' / 'history.csv')
    np.testing.assert_allclose(hist.train_loss, expected, rtol=1e-6)
    np.testing.assert_allclose([v[0] for v in learn.recorder.values], expected, rtol=1e-6)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith('epoch ')]
    assert [f'train_loss {e:.4f}' in l for e, l in zip(expected, lines)] == [True] * 3, lines


@pytest.fixture(scope='module')
def weights(tmp_path_factory) -> Path:
    "A local 'pretrained' weights file for the tiny architecture."
    p = tmp_path_factory.mktemp('w') / 'pretrained.safetensors'
    save_file({k: v.contiguous() for k, v in create_model(ARCH, 10).state_dict().items()}, str(p))
    return p


@pytest.mark.parametrize('epochs', [1, 2])
def test_epochs_is_the_total_with_a_frozen_warmup(folder, samples, weights, tmp_path, epochs):
    cfg = _cfg(folder, tmp_path, epochs)
    cfg.model.pretrained, cfg.train.freeze_epochs = str(weights), 1
    train(cfg, samples, tmp_path / 'run', progress='quiet')
    hist = pd.read_csv(tmp_path / 'run' / 'history.csv')
    assert list(hist.epoch) == list(range(epochs))
    assert load_resume_state(tmp_path / 'run')['epoch'] == epochs


# --- tracking that fails mid-run ------------------------------------------------------------------------------------


class FailingRun:
    "A W&B run whose backend fails from the second `log` on (a full disk, a dead service)."

    id = 'failing'

    def __init__(self):
        self.calls = 0

    def log(self, data, step=None):
        self.calls += 1
        if self.calls >= 2:
            raise OSError(errno.ENOSPC, 'No space left on device')

    def finish(self):
        raise RuntimeError('wandb service is gone')


def test_tracking_failing_mid_run_never_stops_training(folder, samples, tmp_path, caplog):
    tracker = Tracker(FailingRun())
    with caplog.at_level(logging.WARNING, logger='cvbench'):
        train(_cfg(folder, tmp_path, 3), samples, tmp_path / 'run', cbs=[WandbEpochLogger(tracker)], progress='quiet')
        tracker.finish()
    assert list(pd.read_csv(tmp_path / 'run' / 'history.csv').epoch) == [0, 1, 2]  # the run directory is the record
    assert not tracker.active
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and 'W&B' in r.getMessage()]
    assert len(warnings) == 1 and 'W&B log failed' in warnings[0] and 'run directory is complete' in warnings[0]


def test_pipeline_survives_a_failing_tracker(folder, tmp_path, monkeypatch, caplog):
    "`train_run` with a tracker that fails in `log` and `finish`: status `trained`, full history."
    import cvbench.train.tracking as tracking
    from cvbench.runs import train_run

    monkeypatch.setattr(tracking, 'start_tracking', lambda *a, **k: Tracker(FailingRun()))
    with caplog.at_level(logging.WARNING, logger='cvbench'):
        rd = RunDir(train_run(_cfg(folder, tmp_path, 2)))
    assert rd.status['status'] == 'trained'
    assert (rd.path / 'model.safetensors').is_file()
    assert list(pd.read_csv(rd.history).epoch) == [0, 1]
    assert any('W&B' in r.getMessage() for r in caplog.records)


# --- kill -9 during checkpoint saves, and a full disk -----------------------------------------------------------------


def _consistent(run_dir: Path) -> int:
    "Check that every file under its final name loads; return the epochs the last checkpoint holds."
    rd = RunDir(run_dir)
    if not rd.last_checkpoint.exists():
        assert not rd.history.exists() or len(pd.read_csv(rd.history)) <= 1
        return 0
    state = load_resume_state(run_dir)
    assert [h['epoch'] for h in state['history']] == list(range(state['epoch']))
    assert set(load_file(str(rd.best_checkpoint))) == set(state['model'])
    assert len(pd.read_csv(rd.history)) in (state['epoch'], state['epoch'] + 1)
    return state['epoch']


def _same_result(run_dir: Path, ref: Path):
    a, b = load_resume_state(run_dir), load_resume_state(ref)
    assert a['epoch'] == b['epoch']
    for k in b['model']:
        assert torch.equal(a['model'][k], b['model'][k]), k
    cols = lambda p: pd.read_csv(RunDir(p).history).drop(columns='time')  # noqa: E731
    pd.testing.assert_frame_equal(cols(run_dir), cols(ref))
    assert not list(Path(run_dir).rglob('*.tmp'))


@pytest.fixture(scope='module')
def reference(folder, samples, tmp_path_factory):
    "An uninterrupted 3-epoch run in a one-thread child, and how long it took."
    tmp = tmp_path_factory.mktemp('ref')
    t0 = time.monotonic()
    assert _wait(_in_child(lambda: train(_cfg(folder, tmp), samples, tmp / 'run', progress='quiet'))) == 0
    return tmp / 'run', time.monotonic() - t0


def test_kill_9_at_random_moments(folder, samples, reference, tmp_path):
    "20 kills at random moments of training runs: every checkpoint loads; resuming ends at the reference result."
    ref, duration = reference
    rng = random.Random(0)
    cfg, run, runs, kills, mid_write, finished = _cfg(folder, tmp_path), None, 0, 0, 0, set()
    for attempt in range(60):  # until 20 kills have landed inside a run (some runs finish before their kill)
        if run is None:
            runs += 1
            run, done = tmp_path / f'run{runs}', 0
        resume = RunDir(run).last_checkpoint.exists()
        pid = _in_child(lambda: train(cfg, samples, run, resume=resume, progress='quiet'))
        time.sleep(rng.uniform(0.05, 0.7) * duration)
        os.kill(pid, signal.SIGKILL)
        code = _wait(pid)
        assert code in (0, -signal.SIGKILL), code  # finished, or killed; never failed
        kills += code != 0
        mid_write += bool(list(run.rglob('.*.tmp')))
        now = _consistent(run)
        assert now >= done  # no complete checkpoint is ever lost
        done = now
        if code == 0:  # it finished before the kill
            _same_result(run, ref)
            finished.add(run)
            run = None
        if kills == 20:
            break
    assert kills == 20
    if run is not None and run not in finished:  # finish the last run: resuming reaches the reference result exactly
        assert _wait(_in_child(lambda: train(cfg, samples, run, resume=done > 0, progress='quiet'))) == 0
        _same_result(run, ref)
    print(f'kill -9: {kills} kills survived ({mid_write} inside a write), {len(finished)} runs finished between them')


def test_kill_9_inside_the_checkpoint_write(folder, samples, reference, tmp_path):
    "A kill half-way through writing `last.pt` of epoch 2: epoch 1's checkpoint loads, and resuming matches."
    ref, _ = reference
    cfg, run = _cfg(folder, tmp_path), tmp_path / 'run'

    def killed_in_second_save():
        real, calls = torch.save, []

        def save(obj, f, *a, **k):
            calls.append(1)
            if len(calls) == 2:
                f.write(b'\x80' * 1000)
                f.flush()
                os.kill(os.getpid(), signal.SIGKILL)
            return real(obj, f, *a, **k)

        torch.save = save
        train(cfg, samples, run, progress='quiet')

    assert _wait(_in_child(killed_in_second_save)) == -signal.SIGKILL
    assert [p.name.startswith('.last.pt.') for p in run.rglob('.*.tmp')] == [True]  # the half-written file
    assert _consistent(run) == 1
    assert _wait(_in_child(lambda: train(cfg, samples, run, resume=True, progress='quiet'))) == 0
    _same_result(run, ref)


def _no_space(obj, f, *a, **k):
    f.write(b'\x80' * 100)
    raise OSError(errno.ENOSPC, 'No space left on device')


def test_full_disk_at_the_first_checkpoint(folder, samples, tmp_path, monkeypatch):
    monkeypatch.setattr(torch, 'save', _no_space)
    with pytest.raises(CvbenchError) as e:
        train(_cfg(folder, tmp_path, 2), samples, tmp_path / 'run', progress='quiet')
    msg = str(e.value)
    assert 'last.pt' in msg and 'No space left on device' in msg and 'free some space' in msg, msg
    assert 'Exception occured' not in msg  # fastai's wrapper text is not in the user's message
    assert not RunDir(tmp_path / 'run').last_checkpoint.exists()
    assert not list((tmp_path / 'run').rglob('*.tmp'))


def test_full_disk_later_keeps_the_previous_checkpoint(folder, samples, tmp_path, monkeypatch):
    real, calls = torch.save, []

    def save(obj, f, *a, **k):
        calls.append(1)
        return _no_space(obj, f) if len(calls) == 2 else real(obj, f, *a, **k)

    monkeypatch.setattr(torch, 'save', save)
    with pytest.raises(CvbenchError, match='No space left on device'):
        train(_cfg(folder, tmp_path, 3), samples, tmp_path / 'run', progress='quiet')
    assert load_resume_state(tmp_path / 'run')['epoch'] == 1
    assert not list((tmp_path / 'run').rglob('*.tmp'))


def test_unwritable_tracking_folder_is_a_warning(folder, tmp_path, caplog):
    "W&B's folder cannot be created (a file is in its place): tracking is off, with a warning, and nothing raises."
    run_dir = tmp_path / 'run'
    run_dir.mkdir()
    (run_dir / 'wandb').write_text('not a folder')
    cfg = load_config(overrides=['track.wandb=true', 'track.mode=offline'])
    with caplog.at_level(logging.WARNING, logger='cvbench'):
        tracker = start_tracking(cfg, run_dir)
    tracker.log({'a': 1})
    tracker.finish()
    assert not tracker.active
    assert any('W&B' in r.getMessage() for r in caplog.records)
