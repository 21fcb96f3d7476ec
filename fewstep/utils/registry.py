"""Registries: the one way fewstep makes a name selectable in a config.

Every extensible kind -- distillation methods (``method:``), teacher kinds (``teacher.kind``),
network types (a teacher's ``network.type``), built-in data sets (``data:``), diffusers pipeline
families -- has one :class:`Registry`. An entry registers itself where it is defined::

    from fewstep.distill.methods.registry import METHODS

    @METHODS.register("my_recipe")
    class MyRecipe(DistillMethod): ...

The package holding the built-in entries imports each of its entry modules explicitly in its
``__init__`` (so a reader sees the list); a user's entries register when the user's module is
imported -- name it under ``plugins:`` in a run config (or ``--plugin`` on the command line) and
fewstep imports it before the config is validated (:func:`load_plugins`).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Generic, TypeVar

from fewstep.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """Named entries of one kind.

    Args:
        kind: what an entry is, for messages (``"method"``, ``"teacher kind"``).
        field: the config field that names an entry, for messages (``"teacher.kind"``).
        on_register: called with ``(name, entry)`` when an entry is added (e.g. to register a
            method's config class in the run-config union).
    """

    def __init__(self, kind: str, field: str,
                 on_register: Callable[[str, T], None] | None = None) -> None:
        self.kind, self.field = kind, field
        self._entries: dict[str, T] = {}
        self._on_register = on_register

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator (or call on an object) adding ``entry`` under ``name``; registering another
        object under a taken name is a ``ValueError`` (the same object again is a no-op)."""
        def add(entry: T) -> T:
            old = self._entries.get(name)
            if old is not None and old is not entry:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._entries[name] = entry
            if self._on_register is not None:
                self._on_register(name, entry)
            return entry
        return add

    def get(self, name: str) -> T:
        """The entry named ``name``; :class:`ConfigError` naming the field and the choices."""
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            raise ConfigError(f"{self.field}: unknown {self.kind} {name!r}; choose from "
                              f"{', '.join(self.names())}") from None

    def names(self) -> list[str]:
        return sorted(self._entries)

    def items(self) -> Iterator[tuple[str, T]]:
        return iter(sorted(self._entries.items()))

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self._entries

    def __len__(self) -> int:
        return len(self._entries)


def load_plugins(modules: Iterable[str], field: str = "plugins") -> None:
    """Import the user's modules whose entries register themselves (``plugins:``);
    :class:`ConfigError` naming ``field`` if one cannot be imported."""
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError as e:
            raise ConfigError(f"{field}: cannot import {name!r} ({e})") from None


def plugins_of(data: object) -> Sequence[str]:
    """The ``plugins`` list of a raw config mapping (empty when absent); ``ConfigError`` if it
    is not a list of module names."""
    plugins = data.get("plugins", []) if isinstance(data, dict) else []
    if plugins is None:
        return []
    if not isinstance(plugins, list) or not all(isinstance(p, str) for p in plugins):
        raise ConfigError("plugins: must be a list of module names (e.g. [mypkg.fewstep_ext])")
    return plugins


__all__ = ["Registry", "load_plugins", "plugins_of"]
