"Write README.md from nbs/index.ipynb without Quarto: markdown as is, code cells as python blocks, `#| hide` dropped."

import re, sys, nbformat
from pathlib import Path


def cell_md(c) -> str:
    src = c.source.strip()
    if c.cell_type == 'markdown':
        return re.sub(r'\]\((?!https?:|#)', '](nbs/', src)  # links relative to nbs/ become relative to the root
    lines = src.splitlines()
    if any(l.strip().startswith('#| hide') for l in lines):
        return ''
    code = '\n'.join(l for l in lines if not l.strip().startswith('#|')).strip()
    return f'```python\n{code}\n```' if code else ''


def build(root: Path = Path('.')) -> str:
    nb = nbformat.read(root / 'nbs' / 'index.ipynb', as_version=4)
    body = '\n\n'.join(t for t in map(cell_md, nb.cells) if t)
    return (
        '<!-- generated from nbs/index.ipynb by tools/build_readme.py: edit the notebook, then `make readme` -->\n\n'
        + body
        + '\n'
    )


if __name__ == '__main__':
    root = Path(sys.argv[1]) if len(sys.argv) > 1 else Path('.')
    (root / 'README.md').write_text(build(root))
