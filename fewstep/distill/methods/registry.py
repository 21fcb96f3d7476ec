"""The method registry: ``method:`` in a run config names an entry of :data:`METHODS`.

A method registers itself where it is defined (:mod:`fewstep.utils.registry`)::

    @METHODS.register("my_recipe")
    class MyRecipe(DistillMethod):
        config_class = MyRecipeConfig   # method: Literal["my_recipe"] + the sections it reads

Registering also makes the config class part of the run-config union
(:func:`fewstep.distill.config.register_config`). The built-in methods are imported by
:mod:`fewstep.distill.methods`; a user's method by ``plugins:`` in the run config.
"""

from __future__ import annotations

from fewstep.distill.config import DistillConfig, register_config
from fewstep.distill.methods.base import DistillMethod
from fewstep.utils.registry import Registry


def _on_register(name: str, cls: type[DistillMethod]) -> None:
    if cls.config_class is DistillConfig:
        raise TypeError(f"method {name!r} ({cls.__name__}) needs a config_class of its own")
    register_config(name, cls.config_class)
    cls.name = name


#: method name -> class
METHODS: Registry[type[DistillMethod]] = Registry("method", "method", _on_register)


def method_class(name: str) -> type[DistillMethod]:
    """The method registered under ``name`` (:class:`ConfigError` naming the known ones)."""
    return METHODS.get(name)


def method_names() -> list[str]:
    return METHODS.names()


def config_class(name: str) -> type[DistillConfig]:
    """The config class of ``method: name``."""
    return method_class(name).config_class


__all__ = ["METHODS", "config_class", "method_class", "method_names"]
