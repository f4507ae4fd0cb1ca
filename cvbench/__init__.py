"cvbench: a notebook-first research workbench for computer vision."
__version__ = "0.1.0"
