"""Import an object named ``"package.module:attr[.attr]"`` (a builder, a plugin, a feature
network). The one resolver every such option uses; callers turn its ``ValueError`` into a
one-line error naming their own option or config field."""

from __future__ import annotations

import importlib
import re
from collections.abc import Sequence
from typing import Any

#: packages a saved file may name builders from (anything else needs the user's consent, e.g.
#: ``--allow-builder`` for a custom teacher's builder)
TRUSTED_BUILDERS = ("fewstep", "diffusers")

_MODULE = re.compile(r"[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*")
_ATTR = re.compile(r"[A-Za-z]\w*")  # no private or dunder attributes


def import_object(target: str, allowed_prefixes: Sequence[str] | None = None) -> Any:
    """The object ``target = "package.module:attr.attr"`` names.

    ``allowed_prefixes``: when given, the module must be one of them or below one (files may
    name builders; only trusted packages are imported from them). ``ValueError`` saying why
    not: a malformed name, a module outside the allowed ones, an import error, a missing
    attribute. The message is the reason alone: callers say what failed to import."""
    mod_name, sep, attr_path = target.partition(":")
    if not sep or not _MODULE.fullmatch(mod_name) or not attr_path or \
            not all(_ATTR.fullmatch(p) for p in attr_path.split(".")):
        raise ValueError(f"{target!r} is not of the form 'package.module:name'")
    if allowed_prefixes is not None and not any(
            mod_name == p or mod_name.startswith(p + ".") for p in allowed_prefixes):
        raise ValueError(f"module {mod_name!r} is not under {list(allowed_prefixes)}")
    try:
        obj: Any = importlib.import_module(mod_name)
    except ImportError as e:
        raise ValueError(str(e) or f"cannot import {mod_name!r}") from None
    for part in attr_path.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"{mod_name!r} has no attribute {attr_path!r}")
        obj = getattr(obj, part)
    return obj


def import_callable(target: str, allowed_prefixes: Sequence[str] | None = None) -> Any:
    """:func:`import_object`, which must be callable."""
    obj = import_object(target, allowed_prefixes)
    if not callable(obj):
        raise ValueError(f"{target!r} is not callable")
    return obj


__all__ = ["TRUSTED_BUILDERS", "import_callable", "import_object"]
