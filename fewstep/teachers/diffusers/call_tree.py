"""A denoiser call's arguments as named leaves, and a template that rebuilds the call.

A call ``net(*args, **kwargs)`` is a tree of tuples / lists / dicts whose leaves are tensors,
numbers, strings or ``None``. :func:`flatten` gives ``{path: leaf}`` with paths such as
``"kw.added_cond_kwargs.text_embeds"`` or ``"arg.0"``. Dicts are walked; a list or tuple is one
leaf: a *row list* of tensors (Z-Image's per-sample latents and captions: its length is the
batch size) or a list of per-row objects (Qwen-Image's ``img_shapes``), so paths do not depend
on the batch size.

:class:`Template` rebuilds the call from the recorded structure plus the leaves that change per
call; :meth:`Template.fill` is a precompiled list of assignments (no tree walk per step).
"""

from __future__ import annotations

from typing import Any

import torch

#: a leaf's place in a call: ``arg.<i>`` or ``kw.<name>``, then dict keys, joined by dots
Path = str


def is_row_list(v: Any) -> bool:
    """A non-empty list / tuple of tensors (one per batch row)."""
    return isinstance(v, list | tuple) and len(v) > 0 and all(torch.is_tensor(t) for t in v)


def flatten(args: tuple, kwargs: dict) -> dict[Path, Any]:
    """``{path: leaf}`` of a call (see module docstring)."""
    out: dict[Path, Any] = {}

    def walk(prefix: str, v: Any) -> None:
        if isinstance(v, dict):
            for k, x in v.items():
                walk(f"{prefix}.{k}", x)
        else:
            out[prefix] = v

    for i, a in enumerate(args):
        walk(f"arg.{i}", a)
    for k, a in kwargs.items():
        walk(f"kw.{k}", a)
    return out


def get(args: tuple, kwargs: dict, path: Path) -> Any:
    """The leaf at ``path`` of the call ``(args, kwargs)``."""
    head, *rest = path.split(".")
    node: Any = args if head == "arg" else kwargs
    for k in rest:
        node = node[int(k)] if isinstance(node, list | tuple) else node[k]
    return node


def batch_of(v: Any, axis: int = 0) -> int | None:
    """Size of ``axis`` of a tensor (``None`` for 0-d) or the length of a list / tuple."""
    if isinstance(v, list | tuple):
        return len(v)
    if torch.is_tensor(v) and v.ndim > axis:
        return int(v.shape[axis])
    return None


def clone_leaf(v: Any) -> Any:
    """A detached copy of a tensor or row list (other leaves as they are)."""
    if torch.is_tensor(v):
        return v.detach().clone()
    if is_row_list(v):
        return [t.detach().clone() for t in v]
    return v


def rows(v: Any, sl: slice) -> Any:
    """Rows ``sl`` of a batched leaf (a tensor along axis 0, or a list)."""
    return list(v[sl]) if isinstance(v, list | tuple) else v[sl]


class Template:
    """The structure of one recorded call with its static leaves baked in.

    ``fill(values)`` returns ``(args, kwargs)`` where each path of ``dynamic`` takes its value
    from ``values``. Containers on the way to a replaced leaf are copied; the rest is shared.
    """

    def __init__(self, args: tuple, kwargs: dict, dynamic: list[Path]) -> None:
        self.args, self.kwargs = args, kwargs
        self.dynamic = list(dynamic)
        self._setters = [self._compile(p) for p in self.dynamic]

    @staticmethod
    def _compile(path: Path) -> tuple[str, list[Any]]:
        head, *rest = path.split(".")
        return head, [int(k) if k.isdigit() else k for k in rest]

    def fill(self, values: dict[Path, Any]) -> tuple[tuple, dict]:
        args, kwargs = list(self.args), dict(self.kwargs)
        for (head, keys), path in zip(self._setters, self.dynamic, strict=True):
            node: Any = args if head == "arg" else kwargs
            for k in keys[:-1]:  # copy the containers on the way down
                child = node[k]
                child = dict(child) if isinstance(child, dict) else list(child)
                node[k] = child
                node = child
            node[keys[-1]] = values[path]
        return tuple(args), kwargs

    def to(self, device: torch.device | str) -> Template:
        """The template with its static tensors on ``device``."""
        def mv(v: Any) -> Any:
            if torch.is_tensor(v):
                return v.to(device)
            if isinstance(v, dict):
                return {k: mv(x) for k, x in v.items()}
            if isinstance(v, list | tuple):
                return type(v)(mv(x) for x in v)
            return v
        return Template(mv(self.args), mv(self.kwargs), self.dynamic)


__all__ = ["Path", "Template", "batch_of", "clone_leaf", "flatten", "get", "is_row_list", "rows"]
