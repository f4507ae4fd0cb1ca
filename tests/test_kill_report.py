"""`kill -9` while a report is being written, at random moments: every file under its final name is always complete
(the report written before, or the new one), never a truncated mix, and the next run writes it whole again."""

import os
import random
import signal
import time
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from cvbench.evaluate.ledger import ledger_frame, save_ledger
from cvbench.runs import report_run

CLASSES = ['cat', 'dog', 'owl']


def _evaluation(tmp: Path, n: int = 60) -> Path:
    "An evaluation folder: a ledger of `n` real image files (so the report has galleries and figures)."
    rng = np.random.default_rng(0)
    (tmp / 'img').mkdir(parents=True)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(tmp / 'img' / f'{i}.png')
    df = pd.DataFrame(dict(image_id=[str(i) for i in range(n)], path=[f'{i}.png' for i in range(n)], split='valid',
                           label=rng.choice(CLASSES, n)))
    led = ledger_frame(df, rng.dirichlet(np.ones(3), n), CLASSES)
    save_ledger(led, tmp / 'ev' / 'predictions.parquet', CLASSES, image_root=str(tmp / 'img'))
    return tmp / 'ev'


def _complete(report: Path) -> bool:
    "Both documents whole, and every figure a whole PNG."
    html, md = (report / 'report.html').read_text(), (report / 'report.md').read_text()
    pngs = [p for p in report.glob('*.png')]
    whole = all(p.read_bytes().endswith(b'IEND\xaeB`\x82') for p in pngs)
    return html.rstrip().endswith('</html>') and md.startswith('# Evaluation report') and '## Notes' in md and whole


def _report_forever(ev: Path):
    "Child: write the report again and again until killed."
    while True:
        report_run(ev)


def test_kill_9_during_report_writes(tmp_path):
    ev = _evaluation(tmp_path)
    report_run(ev)  # the report a user already has, and the imports paid once before forking
    report = ev / 'report'
    assert _complete(report)
    rng, survived, mid_write, trials = random.Random(0), 0, 0, 20
    for _ in range(trials):
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child is killed
            try:
                _report_forever(ev)
            finally:
                os._exit(1)
        time.sleep(rng.uniform(0.05, 2.0))
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        survived += _complete(report)
        mid_write += any(report.glob('.*.tmp'))  # what a kill inside a write leaves beside the final names
    assert survived == trials
    assert mid_write, 'no kill landed inside a write; the test proved nothing'
    report_run(ev)  # the next write removes what the killed writers left and gives a whole report
    assert _complete(report) and not any(report.glob('.*.tmp'))
