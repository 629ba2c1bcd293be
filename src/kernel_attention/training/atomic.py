"""Moved to ``kernel_attention.store.atomic`` (shared by training, evaluation and the report, so it lives below
them). This alias keeps the old import path working: both names are the same module object."""

import sys

from kernel_attention.store import atomic as _moved

sys.modules[__name__] = _moved
