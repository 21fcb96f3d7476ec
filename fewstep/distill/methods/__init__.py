"""Distillation recipes, one per file, selected by ``method`` in the config."""

from __future__ import annotations

from importlib import import_module

from fewstep.distill.methods.base import Batch, DistillContext, DistillMethod

#: method name -> "module:Class" (imported lazily)
METHODS: dict[str, str] = {
    "turbo_pp": "fewstep.distill.methods.turbo_pp:TurboPP",
    "regression": "fewstep.distill.methods.regression:Regression",
    "dmd2": "fewstep.distill.methods.dmd2:DMD2",
    "sid": "fewstep.distill.methods.sid:SiD",
    "imagine_flash": "fewstep.distill.methods.imagine_flash:ImagineFlash",
}


def method_class(name: str) -> type[DistillMethod]:
    """The recipe class registered under ``name``."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose from {sorted(METHODS)}")
    mod, cls = METHODS[name].split(":")
    return getattr(import_module(mod), cls)


__all__ = ["METHODS", "Batch", "DistillContext", "DistillMethod", "method_class"]
