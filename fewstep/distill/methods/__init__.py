"""Distillation methods, one per file, selected by ``method`` in the config.

Importing this package imports every module in it, so each method file registers itself
(:func:`~fewstep.distill.methods.registry.register`); nothing else lists the methods.
"""

from __future__ import annotations

import pkgutil
from importlib import import_module

from fewstep.distill.methods.base import (
    AuxUpdates,
    Batch,
    DataNeeds,
    DistillContext,
    DistillMethod,
    Logs,
)
from fewstep.distill.methods.registry import METHODS, config_class, method_class, method_names

for _info in pkgutil.iter_modules(__path__):
    if _info.name not in ("base", "registry"):
        import_module(f"{__name__}.{_info.name}")

__all__ = [
    "METHODS",
    "AuxUpdates",
    "Batch",
    "DataNeeds",
    "DistillContext",
    "DistillMethod",
    "Logs",
    "config_class",
    "method_class",
    "method_names",
]
