"""The house rules that keep cvbench simple, checked on the package's source: data flows one way, deploy stands
alone, one module spells the run directory's file names, and the CLI is only an interface."""

import ast, subprocess, sys
from pathlib import Path
import pytest
from cvbench.core import RUN_FILES

PKG = Path(__file__).parents[1] / 'cvbench'
# the layer of each part of the package: a module may import its own layer's peers (within the same part) and lower ones
LAYERS = {'core': 0, 'data': 1, 'models': 2, 'transforms': 2, 'train': 3, 'evaluate': 3, 'deploy': 3, 'report': 4,
          'tasks': 5, 'runs': 6, 'cli': 7}


def part(module: str) -> str:
    "`cvbench.evaluate.ledger` → `evaluate`."
    return module.split('.')[1]


def modules() -> dict[str, ast.Module]:
    out = {}
    for p in sorted(PKG.rglob('*.py')):
        if p.name in ('__init__.py', '_modidx.py'):
            continue
        out['.'.join(('cvbench', *p.relative_to(PKG).with_suffix('').parts))] = ast.parse(p.read_text())
    return out


def imported(name: str, tree: ast.Module) -> set[str]:
    "Every cvbench module `name` imports, at the top or inside a function."
    pkg = name.rsplit('.', 1)[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split('.')[: len(pkg.split('.')) - node.level + 1]
                target = '.'.join([*base, node.module] if node.module else base)
            else:
                target = node.module or ''
            found.add(target)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
    return {t for t in found if t.startswith('cvbench.') and t.count('.') >= 1}


def test_data_flows_one_way():
    bad = []
    for name, tree in modules().items():
        for dep in imported(name, tree):
            a, b = part(name), part(dep)
            if a == b:
                continue
            if LAYERS[b] > LAYERS[a] or (LAYERS[b] == LAYERS[a] == 3):
                bad.append(f'{name} imports {dep}')
    assert not bad, bad


def test_deploy_loads_without_training_or_evaluation_code():
    code = ('import sys, cvbench.deploy.predictor, cvbench.deploy.export, cvbench.deploy.bench, cvbench.deploy.serve; '
            "print(sorted({m.split('.')[1] for m in sys.modules if m.startswith('cvbench.')}))")
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True).stdout
    assert set(eval(out)) <= {'core', 'data', 'models', 'transforms', 'deploy'}, out


def string_constants(tree: ast.Module) -> set[str]:
    return {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)}


@pytest.mark.parametrize('key', ['status_file', 'metrics', 'history', 'samples', 'predictions', 'model', 'preprocess',
                                 'config', 'thresholds', 'slices'])
def test_run_file_names_are_spelled_in_core_only(key):
    name = RUN_FILES[key]
    spelled = sorted(m for m, tree in modules().items() if name in string_constants(tree))
    assert spelled == ['cvbench.core'], spelled


def test_nothing_but_the_cli_imports_the_cli():
    users = [m for m, tree in modules().items() if m != 'cvbench.cli' and 'cvbench.cli' in imported(m, tree)]
    notebooks = [p.name for p in (PKG.parent / 'nbs').rglob('*.ipynb')
                 if 'cvbench.cli' in p.read_text() and p.name != '60_cli.ipynb']
    assert not users and not notebooks, (users, notebooks)


def test_the_cli_is_small():
    assert len((PKG / "cli.py").read_text().splitlines()) < 360  # a table row per subcommand, one call each
