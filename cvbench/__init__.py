"cvbench: a notebook-first research workbench for computer vision."
__version__ = "0.1.0"

import warnings as _warnings

# fastai's imports call `torch.jit.script`, which torch now deprecates: a warning no user can act on
_warnings.filterwarnings('ignore', message=r'`torch\.jit\.script` is deprecated', category=FutureWarning)
