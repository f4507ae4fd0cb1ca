"Lint the package, tests and tools with ruff (pyflakes rules, 120-character lines); exit 1 on any finding."
import json, subprocess, sys
from pathlib import Path

PATHS = ['cvbench', 'tests', 'tools']


def generated(item: dict) -> bool:
    "nbdev writes `__all__` wrapped at 120 characters after its 10-character `__all__ = `: not ours to shorten."
    if item['code'] != 'E501':
        return False
    line = Path(item['filename']).read_text().splitlines()[item['location']['row'] - 1]
    return line.startswith('__all__ = [')


def main() -> int:
    r = subprocess.run([sys.executable, '-m', 'ruff', 'check', '--output-format', 'json', *PATHS],
                       capture_output=True, text=True)
    if r.returncode not in (0, 1):
        print(r.stderr, file=sys.stderr)
        return r.returncode
    found = [i for i in json.loads(r.stdout or '[]') if not generated(i)]
    for i in found:
        where = f'{Path(i["filename"]).relative_to(Path.cwd())}:{i["location"]["row"]}:{i["location"]["column"]}'
        print(f'{where}: {i["code"]} {i["message"]}')
    print(f'lint: {len(found)} finding(s) in {", ".join(PATHS)}' if found else 'ok: lint (ruff: pyflakes, 120 columns)')
    return 1 if found else 0


if __name__ == '__main__':
    sys.exit(main())
