"""Moved to ``kernel_attention.store.metrics`` (shared by training, evaluation and the report, so it lives below
them). This alias keeps the old import path working: both names are the same module object."""

import sys

from kernel_attention.store import metrics as _moved

sys.modules[__name__] = _moved
