"""Batch operations on conditioning of any kind: ``None`` (unconditional), label / embedding
tensors ``(B, ...)``, or objects with a static ``cat(items)`` and row indexing (e.g.
:class:`~fewstep.diffusers_adapters.zimage.PromptEmbeds`)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


def cat_cond(a: Any, b: Any) -> Any:
    """Concatenate two conditioning batches along the batch axis.

    ``None`` + ``None`` is ``None`` (unconditional); tensors (labels ``(B,)``, embeddings
    ``(B, ...)``) use ``torch.cat``; other objects use their type's ``cat([a, b])`` (e.g.
    :class:`~fewstep.diffusers_adapters.zimage.PromptEmbeds`, whose rows may be padded to
    different lengths).
    """
    if a is None and b is None:
        return None
    if a is None or b is None:
        raise ValueError("cannot concatenate a conditioned and an unconditional batch")
    if torch.is_tensor(a):
        return torch.cat([a, b])
    cat = getattr(type(a), "cat", None)
    if cat is None:
        raise TypeError(f"{type(a).__name__} conditioning has no cat(); give it a static "
                        "cat(items) or pass tensors")
    return cat([a, b])


def where_cond(mask: Tensor, a: Any, b: Any) -> Any:
    """Row ``i`` of ``a`` where ``mask[i]`` else of ``b`` (``mask (B,)`` bool; e.g. condition
    dropout to the null condition). Tensors use ``torch.where``; other objects are indexed per
    row and joined with their type's ``cat``."""
    if torch.is_tensor(a):
        return torch.where(mask.reshape(-1, *([1] * (a.ndim - 1))), a, b)
    rows = [a[i] if bool(m) else b[i] for i, m in enumerate(mask.tolist())]
    return type(a).cat(rows)
