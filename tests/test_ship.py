"Issue 5 (first part): export with end-to-end parity, predictor from the CLI, tampered packages refused."
import json
from pathlib import Path
import pandas as pd
from conftest import cli, run_dir_of

def test_export_predict_report(tiny, tmp_path, data_cache):
    rd = run_dir_of(cli('run', *tiny, cwd=tmp_path, check=0))
    out = cli('export', rd, '--out', tmp_path/'pkg', check=0).stdout
    assert 'package:' in out
    m = json.loads((tmp_path/'pkg'/'package.json').read_text())
    assert {'model.onnx', 'model.ts', 'model.safetensors', 'preprocess.json', 'MODEL_CARD.md'} <= set(m['files']) and all(p['passed'] for p in m['parity'])
    assert '## Export parity' in (tmp_path/'pkg'/'MODEL_CARD.md').read_text()
    r = cli('predict', tmp_path/'pkg', data_cache/'digits', '--out', tmp_path/'l.parquet', check=0)
    assert 'accuracy:' in r.stdout and len(pd.read_parquet(tmp_path/'l.parquet')) == 1797
    # the ledger goes straight into the evaluation tools
    cli('report', tmp_path/'l.parquet', check=0)
    assert '## Headline metrics' in (tmp_path/'l-report'/'report.md').read_text()
    # a tampered package is refused
    (tmp_path/'pkg'/'model.onnx').write_bytes(b'garbage')
    assert 'does not match its recorded SHA-256' in cli('predict', tmp_path/'pkg', data_cache/'digits', '--out', tmp_path/'x.parquet', check=2).stderr

def test_bench_and_quantize_cli(tiny, tmp_path):
    rd = run_dir_of(cli('run', *tiny, cwd=tmp_path, check=0))
    cli('export', rd, '--out', tmp_path/'pkg', check=0)
    q = cli('quantize', tmp_path/'pkg', rd, '--calibration', 50, check=0).stdout
    assert 'agreement:' in q and 'recommend:' in q
    out = cli('bench', tmp_path/'pkg', '--iters', 10, '--batch-sizes', 1, 4, check=0).stdout
    t = pd.read_csv(tmp_path/'pkg'/'bench'/'bench.csv')
    assert {'pytorch eager', 'torchscript', 'ort fp32', 'ort int8', 'predictor (onnx)'} <= set(t.backend)
    assert (t.peak_rss_mb.dropna() > 50).all() and (t.p99_ms >= t.p50_ms).all()
