"Sphinx configuration of the cvbench docs site; `tools/build_docs.py` writes the sources and runs Sphinx with it."

project = 'cvbench'
author = 'cvbench developers'
copyright = 'cvbench developers, Apache-2.0'
html_title = 'cvbench'

extensions = ['myst_nb']
exclude_patterns = ['**.ipynb_checkpoints']

# myst-nb: render the outputs committed in the notebooks; execute nothing.
nb_execution_mode = 'off'
nb_output_stderr = 'remove'
nb_render_markdown_format = 'gfm'  # result objects' `_repr_markdown_` (tables, links)
nb_ipywidgets_js = {}  # no widget scripts from a CDN: the site works offline
nb_mime_priority_overrides = [
    ('html', 'application/vnd.jupyter.widget-view+json', None),
    ('html', 'application/vnd.jupyter.widget-state+json', None),
    ('html', 'application/javascript', None),
]

# MyST: nbdev's links are rewritten to relative URLs by build_docs.py; Sphinx keeps them as they are.
myst_enable_extensions = ['attrs_inline', 'attrs_block', 'colon_fence']
myst_all_links_external = True
suppress_warnings = ['myst.header']  # show_doc's `###` right under a page's `#` title

html_theme = 'furo'
html_static_path = ['_static']
html_css_files = ['cvbench.css']
html_copy_source = False
html_show_sourcelink = False
html_last_updated_fmt = None
html_theme_options = {'navigation_with_keys': True}
