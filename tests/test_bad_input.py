"Fault injection: every way a user's input can be wrong gives one clear message (exit 2), or is skipped and listed."

import pandas as pd
from conftest import cli_here as cli, run_dir_of, make_imagefolder


def _err(tiny, *extra, cwd=None):
    r = cli('run', *tiny, *extra, cwd=cwd, check=2)
    assert 'Traceback' not in r.stderr, r.stderr
    return r.stderr


def test_missing_folder(tiny, tmp_path):
    assert 'does not exist' in _err(tiny, f'data.source={tmp_path}/nope')


def test_empty_folder(tiny, tmp_path):
    (tmp_path / 'empty').mkdir()
    assert 'has no class folders' in _err(tiny, f'data.source={tmp_path}/empty')


def test_class_folder_without_images(tiny, tmp_path):
    root = make_imagefolder(tmp_path / 'ds', {'a': 3, 'b': 3})
    (root / 'c').mkdir()
    assert 'class folder' in (e := _err(tiny, f'data.source={root}')) and 'has no images' in e


def test_unknown_model(tiny):
    assert 'unknown timm model `resnet81`; did you mean' in _err(tiny, 'model.name=resnet81')


def test_unknown_key(tiny):
    assert 'unknown config key `train.epoch`; did you mean `train.epochs`' in _err(tiny, 'train.epoch=3')


def test_wrong_type(tiny):
    assert '`train.batch_size` must be int' in _err(tiny, 'train.batch_size=big')


def test_bad_config_file(tiny, tmp_path):
    (tmp_path / 'c.yaml').write_text('train: [1, 2\n')
    assert 'is not valid YAML' in _err(tiny, tmp_path / 'c.yaml')


def test_resume_not_a_run(tmp_path):
    assert 'is not a run directory' in cli('run', '--resume', tmp_path, check=2).stderr


def test_csv_missing_column(tiny, tmp_path):
    (tmp_path / 'm.csv').write_text('file,label\na.png,a\n')
    assert "lacks column(s) ['path']" in _err(tiny, f'data.source={tmp_path}/m.csv')


def test_unreadable_images_are_skipped_and_listed(tiny, tmp_path):
    root = make_imagefolder(tmp_path / 'ds', {'a': 12, 'b': 12})
    (root / 'a' / 'zero.png').write_bytes(b'')
    (root / 'a' / 'text.jpg').write_text('<html>not an image</html>')
    good = (root / 'b' / '0.png').read_bytes()
    (root / 'b' / 'truncated.png').write_bytes(good[: len(good) // 2])
    (root / 'b' / 'notes.txt').write_text('a note')
    r = cli('run', *tiny, f'data.source={root}', 'data.valid_pct=0.25', cwd=tmp_path, check=0)
    rd = run_dir_of(r)
    sk = pd.read_csv(rd / 'skipped.csv').set_index('path')['reason'].to_dict()
    assert sk['a/zero.png'] == 'empty file (0 bytes)'
    assert sk['a/text.jpg'].startswith('not an image')
    assert sk['b/truncated.png'].startswith('truncated or corrupt')
    assert sk['b/notes.txt'].startswith('not an image file extension')
    assert len(pd.read_parquet(rd / 'samples.parquet')) == 24
    md = (rd / 'report' / 'report.md').read_text()
    assert '4 file(s) could not be used' in md and 'b/truncated.png' in md


def test_csv_manifest_with_missing_file_and_metadata(tiny, tmp_path):
    root = make_imagefolder(tmp_path / 'imgs', {'a': 10, 'b': 10})
    rows = [dict(path=f'{c}/{i}.png', label=c, camera='x' if i % 2 else 'y') for c in 'ab' for i in range(10)] + [
        dict(path='a/gone.png', label='a', camera='x')
    ]
    pd.DataFrame(rows).to_csv(tmp_path / 'manifest.csv', index=False)
    rd = run_dir_of(
        cli('run', *tiny, f'data.source={tmp_path}/manifest.csv', f'data.root={root}', cwd=tmp_path, check=0)
    )
    assert pd.read_csv(rd / 'skipped.csv').to_dict('records') == [dict(path='a/gone.png', reason='file not found')]
    assert 'camera' in pd.read_parquet(rd / 'samples.parquet').columns
