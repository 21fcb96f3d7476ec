"""Conditioning batches: what a denoiser takes as ``cond``, and the four operations on it.

A conditioning batch is one of

* ``None`` -- unconditional;
* a ``Tensor`` of shape ``(B, ...)`` -- class labels ``(B,)`` long, or fixed-size embeddings;
* a :class:`PromptEmbeds` -- per-sample prompt embeddings of different lengths, right-padded
  ``embeds (B, L, D)`` with a bool ``mask (B, L)``, plus optional pooled embeddings
  ``pooled (B, P)`` (e.g. Flux's CLIP vector).

Recipes never look inside: they use :func:`cat_cond` (concatenate along the batch axis),
:func:`index_cond` (rows), :func:`cond_to` (device / dtype) and :func:`where_cond` (row ``i`` of
``a`` where ``mask[i]`` else of ``b``, e.g. condition dropout). A new conditioning type works
everywhere if it has ``cat(items)`` (static), ``__getitem__``, ``to(device, dtype)``,
``where(mask, other)`` and ``__len__``, like :class:`PromptEmbeds`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

Cond = Any  # None | Tensor | PromptEmbeds | any type with cat / __getitem__ / to / where


@dataclass
class PromptEmbeds:
    """Per-sample caption features, right-padded: ``embeds (B, L, D)``, ``mask (B, L)`` bool.

    Row ``i`` holds ``mask[i].sum()`` valid tokens at the front. ``pooled (B, P)`` is an
    optional per-sample vector (a pooled text embedding). Build from a list of ``(L_i, D)``
    tensors with :meth:`from_list`; get it back with :meth:`to_list`.

    ``lengths``: the valid-token counts as host integers, kept by every operation that can keep
    them without reading device memory (:meth:`from_list`, ``to``, indexing with host indices,
    ``repeat``, ``cat``), so that :meth:`to_list` -- which networks taking a list of captions
    (Z-Image) call in every forward -- needs no device-to-host copy. ``None``: read from
    ``mask`` when needed.
    """

    embeds: Tensor
    mask: Tensor
    pooled: Tensor | None = None
    lengths: tuple[int, ...] | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if self.embeds.ndim != 3 or self.mask.shape != self.embeds.shape[:2]:
            raise ValueError(f"PromptEmbeds needs embeds (B, L, D) and mask (B, L); got "
                             f"{tuple(self.embeds.shape)} and {tuple(self.mask.shape)}")
        if self.pooled is not None and (self.pooled.ndim != 2
                                        or self.pooled.shape[0] != self.embeds.shape[0]):
            raise ValueError(f"PromptEmbeds.pooled must be (B, P) with B = "
                             f"{self.embeds.shape[0]}; got {tuple(self.pooled.shape)}")
        self.mask = self.mask.to(dtype=torch.bool)
        if self.lengths is not None and len(self.lengths) != self.embeds.shape[0]:
            raise ValueError(f"PromptEmbeds.lengths has {len(self.lengths)} entries for "
                             f"{self.embeds.shape[0]} rows")

    @classmethod
    def from_list(cls, feats: Sequence[Tensor], pooled: Sequence[Tensor] | Tensor | None = None
                  ) -> PromptEmbeds:
        """Pad a list of ``(L_i, D)`` tensors (each ``L_i >= 1``) into a batch; ``pooled``:
        ``(P,)`` per row (or a ``(B, P)`` tensor)."""
        if len(feats) == 0:
            raise ValueError("empty list of caption features")
        lengths = [int(f.shape[0]) for f in feats]
        if min(lengths) < 1:
            raise ValueError("every caption needs at least one token")
        embeds = torch.nn.utils.rnn.pad_sequence(list(feats), batch_first=True)
        mask = torch.arange(embeds.shape[1], device=embeds.device)[None] < torch.tensor(
            lengths, device=embeds.device)[:, None]
        if pooled is not None and not torch.is_tensor(pooled):
            pooled = torch.stack(list(pooled))
        return cls(embeds, mask, pooled, tuple(lengths))

    def to_list(self) -> list[Tensor]:
        """The valid tokens of each row: ``[(L_i, D), ...]``."""
        lengths = self.lengths if self.lengths is not None else self.mask.sum(dim=1).tolist()
        return [self.embeds[i, : int(n)] for i, n in enumerate(lengths)]

    def __len__(self) -> int:
        return int(self.embeds.shape[0])

    def __getitem__(self, idx: Any) -> PromptEmbeds:
        e, m = self.embeds[idx], self.mask[idx]
        p = None if self.pooled is None else self.pooled[idx]
        if e.ndim == 2:
            e, m = e[None], m[None]
            p = None if p is None else p[None]
        return PromptEmbeds(e, m, p, self._lengths_at(idx))

    def _lengths_at(self, idx: Any) -> tuple[int, ...] | None:
        """``lengths`` of the rows ``idx`` selects, when that needs no device read."""
        if self.lengths is None or (torch.is_tensor(idx) and idx.device.type != "cpu"):
            return None
        try:
            rows = torch.arange(len(self.lengths))[idx]
        except (IndexError, TypeError):  # not a batch index: recompute from mask when needed
            return None
        return tuple(self.lengths[i] for i in rows.reshape(-1).tolist())

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None,
           non_blocking: bool = False) -> PromptEmbeds:
        """Move (and cast the float embeddings; the mask stays bool)."""
        nb = non_blocking
        p = (None if self.pooled is None
             else self.pooled.to(device=device, dtype=dtype, non_blocking=nb))
        return PromptEmbeds(self.embeds.to(device=device, dtype=dtype, non_blocking=nb),
                            self.mask.to(device=device, non_blocking=nb), p, self.lengths)

    def pin_memory(self) -> PromptEmbeds:
        """Page-locked host copies (for ``to(cuda, non_blocking=True)``)."""
        p = None if self.pooled is None else self.pooled.pin_memory()
        return PromptEmbeds(self.embeds.pin_memory(), self.mask.pin_memory(), p, self.lengths)

    def repeat(self, n: int) -> PromptEmbeds:
        """Tile the whole batch ``n`` times: ``[c0, c1, c0, c1, ...]``."""
        p = None if self.pooled is None else self.pooled.repeat(n, 1)
        lengths = None if self.lengths is None else self.lengths * n
        return PromptEmbeds(self.embeds.repeat(n, 1, 1), self.mask.repeat(n, 1), p, lengths)

    def repeat_interleave(self, n: int) -> PromptEmbeds:
        """Repeat each row ``n`` times: ``[c0, c0, c1, c1, ...]`` (several images per prompt)."""
        p = None if self.pooled is None else self.pooled.repeat_interleave(n, 0)
        lengths = None if self.lengths is None else \
            tuple(v for v in self.lengths for _ in range(n))
        return PromptEmbeds(self.embeds.repeat_interleave(n, 0),
                            self.mask.repeat_interleave(n, 0), p, lengths)

    @staticmethod
    def cat(items: Sequence[PromptEmbeds]) -> PromptEmbeds:
        """Concatenate batches with possibly different padded lengths."""
        feats: list[Tensor] = []
        for it in items:
            feats.extend(it.to_list())
        pooled_rows = [it.pooled for it in items if it.pooled is not None]
        pooled: Tensor | None = None
        if len(pooled_rows) == len(items):
            pooled = torch.cat(pooled_rows)
        elif pooled_rows:
            raise ValueError("cannot concatenate PromptEmbeds with and without pooled vectors")
        return PromptEmbeds.from_list(feats, pooled)

    def where(self, mask: Tensor, other: PromptEmbeds) -> PromptEmbeds:
        """Row ``i`` of ``self`` where ``mask[i]`` else row ``i`` of ``other``."""
        rows = [self[i] if bool(m) else other[i] for i, m in enumerate(mask.tolist())]
        return PromptEmbeds.cat(rows)


def cat_cond(items: Sequence[Cond]) -> Cond:
    """Concatenate conditioning batches along the batch axis (all ``None`` -> ``None``)."""
    if all(c is None for c in items):
        return None
    if any(c is None for c in items):
        raise ValueError("cannot concatenate a conditioned and an unconditional batch")
    if all(torch.is_tensor(c) for c in items):
        return torch.cat(list(items))
    cat = getattr(type(items[0]), "cat", None)
    if cat is None:
        raise TypeError(f"{type(items[0]).__name__} conditioning has no cat(); give it a static "
                        "cat(items) or pass tensors")
    return cat(list(items))


def index_cond(cond: Cond, idx: Any) -> Cond:
    """Rows ``idx`` (int, slice, index tensor) of a conditioning batch."""
    return None if cond is None else cond[idx]


def cond_to(cond: Cond, device: torch.device | str | None = None,
            dtype: torch.dtype | None = None) -> Cond:
    """Move a conditioning batch; integer labels keep their dtype."""
    if cond is None:
        return None
    if torch.is_tensor(cond):
        return cond.to(device=device, dtype=dtype if cond.is_floating_point() else None)
    return cond.to(device, dtype)


def where_cond(mask: Tensor, a: Cond, b: Cond) -> Cond:
    """Row ``i`` of ``a`` where ``mask[i]`` else of ``b`` (``mask (B,)`` bool)."""
    if torch.is_tensor(a):
        return torch.where(mask.reshape(-1, *([1] * (a.ndim - 1))).to(a.device), a, b)
    if hasattr(a, "where"):
        return a.where(mask, b)
    rows = [a[i] if bool(m) else b[i] for i, m in enumerate(mask.tolist())]
    return type(a).cat(rows)


__all__ = ["Cond", "PromptEmbeds", "cat_cond", "cond_to", "index_cond", "where_cond"]
