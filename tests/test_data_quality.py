"Data quality end to end: data check on planted defects (CLI), exclusions, splits, versions, diffs, pHash parity."

import json, shutil
import numpy as np, pandas as pd, pytest
from PIL import Image
import imagehash
from cvbench.data.datasets import load_dataset
from cvbench.data.samples import Samples, load_samples_table
from cvbench.data.quality import plant_defects, phash
from conftest import cli_here as cli, make_imagefolder


@pytest.fixture(scope='module')
def planted(tmp_path_factory):
    d = tmp_path_factory.mktemp('planted')
    mnist = load_dataset('mnist', cache_dir=d / 'data')
    small = Samples(mnist.df.groupby('label').head(30), mnist.root, classes=mnist.classes)
    s, truth = plant_defects(small, d / 'ds', n_each=2, seed=1)
    return d / 'ds', truth


def test_data_check_finds_planted_defects(planted, tmp_path):
    folder, truth = planted
    r = cli('data', 'check', folder, '--out', tmp_path / 'chk', '--fail-on', 'error', cwd=tmp_path)
    assert r.returncode == 1, r.stderr  # corrupt files are errors
    issues = pd.read_csv(tmp_path / 'chk' / 'issues.csv')
    for kind in ('unreadable', 'exact_duplicate', 'near_duplicate', 'dark', 'blurry', 'tiny', 'ext_mismatch'):
        planted_paths = set(truth.path[truth.issue == kind])
        assert planted_paths <= set(issues.path[issues.issue == kind]), kind
    summary = json.loads((tmp_path / 'chk' / 'summary.json').read_text())
    assert summary['issues']['unreadable'] == 2 and len(summary['version']) == 16
    assert '## unreadable (2)' in (tmp_path / 'chk' / 'report.md').read_text()
    assert (
        cli(
            'data', 'check', folder, '--out', tmp_path / 'chk2', '--no-label-issues', '--fail-on', 'never', cwd=tmp_path
        ).returncode
        == 0
    )


def test_exclude_writes_clean_table_and_never_touches_files(planted, tmp_path):
    folder, truth = planted
    before = sorted(p.name for p in folder.rglob('*'))
    cli(
        'data',
        'check',
        folder,
        '--out',
        tmp_path / 'c',
        '--no-label-issues',
        '--exclude',
        'unreadable',
        'exact_duplicate',
        '--write-clean',
        tmp_path / 'clean.parquet',
        check=0,
    )
    clean = load_samples_table(tmp_path / 'clean.parquet')
    assert not set(clean.df.path) & set(truth.path[truth.issue.isin(['unreadable', 'exact_duplicate'])])
    assert sorted(p.name for p in folder.rglob('*')) == before
    assert '## Exclusions applied' in (tmp_path / 'c' / 'datasheet.md').read_text()


def test_leakage_and_duplicate_aware_split(tmp_path):
    root = make_imagefolder(tmp_path / 'ds', {'train/a': 12, 'train/b': 12, 'valid/a': 4, 'valid/b': 4}, size=(24, 24))
    rng = np.random.default_rng(0)
    for split in ('train', 'valid'):
        for c in 'ab':
            for i, p in enumerate(sorted((root / split / c).glob('*.png'))):
                Image.fromarray(rng.integers(0, 255, (24, 24, 3), np.uint8)).save(p)
    shutil.copy(root / 'train' / 'a' / '3.png', root / 'valid' / 'a' / 'leak.png')
    cli('data', 'check', root, '--out', tmp_path / 'chk', '--no-label-issues', check=0)
    iss = pd.read_csv(tmp_path / 'chk' / 'issues.csv')
    assert iss[iss.issue == 'leakage'].path.tolist() == ['valid/a/leak.png']
    cli(
        'data', 'split', root, '--out', tmp_path / 'split.parquet', check=0
    )  # re-split everything: duplicates must land together
    s = load_samples_table(tmp_path / 'split.parquet').df.set_index('path').split
    assert s['train/a/3.png'] == s['valid/a/leak.png']
    # --no-dedup splits without the scan (it once crashed: `pd` undefined)
    out = cli('data', 'split', root, '--out', tmp_path / 'plain.parquet', '--no-dedup', check=0).stdout
    assert 'no dedup' in out and len(load_samples_table(tmp_path / 'plain.parquet')) == 33


def test_version_and_diff(tmp_path):
    root = make_imagefolder(tmp_path / 'v1', {'a': 3, 'b': 3})
    v1 = cli('data', 'version', root, '--out', tmp_path / 'm1.csv', check=0).stdout
    shutil.move(root / 'a' / '0.png', root / 'b' / 'moved.png')
    (root / 'b' / '1.png').unlink()
    out = cli('data', 'diff', tmp_path / 'm1.csv', root, check=0).stdout
    assert '1 relabelled' in out and '1 removed' in out and v1.split()[1] not in out.split('→')[1]


def test_data_check_bad_input(tmp_path):
    assert 'does not exist' in cli('data', 'check', tmp_path / 'nope', check=2).stderr
    (tmp_path / 'empty').mkdir()
    assert 'has no class folders' in cli('data', 'check', tmp_path / 'empty', check=2).stderr
    root = make_imagefolder(tmp_path / 'ds', {'a': 3})
    assert (
        "group column `site`"
        in cli('data', 'split', root, '--out', tmp_path / 'x.parquet', '--group', 'site', check=2).stderr
    )


def test_phash_equals_imagehash():
    rng = np.random.default_rng(0)
    for _ in range(5):
        img = Image.fromarray(rng.integers(0, 255, (rng.integers(20, 90), rng.integers(20, 90), 3), np.uint8))
        assert f'{phash(img):016x}' == str(imagehash.phash(img))
