"""Distillation methods, one per file, selected by ``method`` in the config.

Each method file registers itself (``@METHODS.register(name)``,
:mod:`fewstep.distill.methods.registry`); this package imports the built-in ones below. Adding
a method: one file here and one import line (or, outside the package, a module named under
``plugins:`` in the run config).
"""

from __future__ import annotations

from fewstep.distill.context import AuxUpdates, Batch, DataNeeds, DistillContext, Logs
from fewstep.distill.methods import (  # noqa: F401  (the built-in methods register themselves)
    dmd2,
    imagine_flash,
    ladd,
    regression,
    sid,
    turbo_pp,
)
from fewstep.distill.methods.base import DistillMethod
from fewstep.distill.methods.registry import METHODS, config_class, method_class, method_names

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
