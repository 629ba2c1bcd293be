"""The kernel zoo. Every module in this package registers one kernel in ``KERNELS``; importing the package
imports them all, so adding a kernel is one new file here plus one ``conf/kernel/<name>.yaml``."""

import importlib
import pkgutil

from kernel_attention.kernels.base import (
    INF,
    KERNELS,
    Kernel,
    KernelConfig,
    KernelProperties,
    Positions,
    build_kernel,
    draw_state_keys,
    keep_mask,
    kernel_properties,
    kernels_of,
)

for _mod in pkgutil.iter_modules(__path__):
    if _mod.name != "base" and not _mod.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_mod.name}")

__all__ = ["INF", "KERNELS", "Kernel", "KernelConfig", "KernelProperties", "Positions", "build_kernel",
           "draw_state_keys", "keep_mask", "kernel_properties", "kernels_of"]
