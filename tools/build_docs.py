"Render every notebook in nbs/ to HTML under _docs/ (offline stand-in for `nbdev-docs` where Quarto is missing)."

import nbformat
from pathlib import Path
from nbconvert import HTMLExporter


def build(root: Path = Path('.'), out: Path = Path('_docs')):
    exp = HTMLExporter(template_name='lab')
    nbs = sorted((root / 'nbs').rglob('*.ipynb'))
    for p in nbs:
        if '.ipynb_checkpoints' in p.parts:
            continue
        nb = nbformat.read(p, as_version=4)
        nb.cells = [
            c for c in nb.cells if not any(l.strip() in ('#| hide', '#|hide') for l in c.source.splitlines()[:3])
        ]
        html, _ = exp.from_notebook_node(nb)
        dest = out / p.relative_to(root / 'nbs').with_suffix('.html')
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(html)
    rel = [p.relative_to(root / 'nbs') for p in nbs]
    links = ''.join(f'<li><a href="{r.with_suffix(".html").as_posix()}">{r.with_suffix("").as_posix()}</a></li>'
                    for r in rel)
    (out / 'toc.html').write_text(
        f'<!doctype html><meta charset="utf-8"><title>cvbench docs</title><h1>cvbench</h1><ul>{links}</ul>'
    )
    return out


if __name__ == '__main__':
    print(build())
