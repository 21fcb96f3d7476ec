"""The method registry: ``@register`` on a :class:`DistillMethod` subclass makes it (and its
config) available as ``method: <name>``.

Every module of the :mod:`fewstep.distill.methods` package is imported with the package, so a
method file registers itself by existing; a method defined elsewhere registers when its module
is imported (before the config is validated).
"""

from __future__ import annotations

from collections.abc import Callable

from fewstep.distill.config import METHOD_CONFIGS, DistillConfig, register_config
from fewstep.distill.methods.base import DistillMethod

#: method name -> class
METHODS: dict[str, type[DistillMethod]] = {}


def register(config: type[DistillConfig]) -> Callable[[type[DistillMethod]],
                                                      type[DistillMethod]]:
    """Class decorator: register a method under its config's ``method`` literal."""
    name = config.model_fields["method"].default

    def deco(cls: type[DistillMethod]) -> type[DistillMethod]:
        register_config(name, config)
        cls.name, cls.config_class = name, config
        METHODS[name] = cls
        return cls
    return deco


def method_class(name: str) -> type[DistillMethod]:
    """The method registered under ``name`` (``ValueError`` naming the known ones)."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose from {', '.join(sorted(METHODS))}")
    return METHODS[name]


def method_names() -> list[str]:
    return sorted(METHODS)


def config_class(name: str) -> type[DistillConfig]:
    """The config class of ``method: name``."""
    method_class(name)
    return METHOD_CONFIGS[name]
