"""Conditioning as the denoiser's own kwargs: :class:`CondBatch`.

A :class:`CondBatch` holds, for each conditioning leaf of the denoiser call (a path such as
``kw.encoder_hidden_states`` or ``kw.added_cond_kwargs.time_ids``), a batched value: a tensor
with the batch on axis 0 (leaves batched on another axis -- HiDream's per-layer states
``(layers, B, L, D)`` -- are stored moved to axis 0), a list of ``B`` per-row items (Z-Image's
captions, Qwen-Image's ``img_shapes``), or ``None``. The values are what the pipeline's
``__call__`` passed to its denoiser for these prompts (captured by :func:`.spec.capture_cond`),
so prompt encoding needs no per-family code.

It implements fewstep's conditioning protocol (:mod:`fewstep.core.conditioning`: ``cat``,
``__getitem__``, ``to``, ``where``, ``__len__``; also ``repeat``, ``repeat_interleave``,
``pin_memory``). Rows of different lengths (a prompt's own token count) are zero-padded at the end
of each differing axis; when the pipeline passes a padding mask only for padded batches
(Qwen-Image: ``None`` for one prompt), :attr:`pad_masks` names it and :meth:`cat` builds it
(1 = token, 0 = padding) -- the pipeline's own batched behaviour.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

#: mask path -> (padded leaf path, its sequence axis, mask dtype), set from a recording
PadMasks = dict[str, tuple[str, int, torch.dtype]]


def _n(v: Any) -> int | None:
    if v is None:
        return None
    return len(v) if isinstance(v, list | tuple) else int(v.shape[0])


class CondBatch:
    """The conditioning leaves of ``len(self)`` rows (see module docstring)."""

    def __init__(self, leaves: dict[str, Any], pad_masks: PadMasks | None = None) -> None:
        sizes = {n for v in leaves.values() if (n := _n(v)) is not None}
        if len(sizes) > 1:
            raise ValueError(f"CondBatch leaves disagree on the batch size: {sorted(sizes)}")
        self.leaves = leaves
        self.pad_masks = pad_masks or {}
        self._n = sizes.pop() if sizes else 0

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, idx: Any) -> CondBatch:
        if isinstance(idx, int):
            idx = slice(idx, idx + 1)
        sel = (list(range(self._n))[idx] if isinstance(idx, slice)
               else torch.as_tensor(idx).reshape(-1).tolist())
        out: dict[str, Any] = {}
        for p, v in self.leaves.items():
            if v is None:
                out[p] = None
            elif isinstance(v, list | tuple):
                out[p] = [v[i] for i in sel]
            else:
                out[p] = v[idx] if isinstance(idx, slice) else v[torch.as_tensor(sel)]
        return CondBatch(out, self.pad_masks)

    def _map(self, fn: Any) -> CondBatch:
        def one(t: Any) -> Any:
            return fn(t) if torch.is_tensor(t) else t
        return CondBatch({p: [one(t) for t in v] if isinstance(v, list | tuple) else one(v)
                          for p, v in self.leaves.items()}, self.pad_masks)

    def to(self, device: Any = None, dtype: torch.dtype | None = None,
           non_blocking: bool = False) -> CondBatch:
        """Move; ``dtype`` casts floating-point leaves only (masks, ids keep theirs)."""
        return self._map(lambda t: t.to(device=device, non_blocking=non_blocking,
                                        dtype=dtype if dtype and t.is_floating_point() else None))

    def pin_memory(self) -> CondBatch:
        return self._map(lambda t: t.pin_memory())

    def repeat(self, n: int) -> CondBatch:
        """The whole batch ``n`` times: ``[c0, c1, c0, c1, ...]``."""
        return CondBatch.cat([self] * n)

    def repeat_interleave(self, n: int) -> CondBatch:
        """Each row ``n`` times: ``[c0, c0, c1, c1, ...]``."""
        return self[[i for i in range(len(self)) for _ in range(n)]]

    @staticmethod
    def cat(items: Sequence[CondBatch]) -> CondBatch:
        """Rows of ``items`` in order; tensors of different lengths are zero-padded at the end
        (and a pipeline-style padding mask built, see module docstring)."""
        paths = list(items[0].leaves)
        masks = items[0].pad_masks
        if any(list(it.leaves) != paths for it in items):
            raise ValueError("cannot concatenate CondBatch with different leaves")
        out: dict[str, Any] = {}
        lengths: dict[str, list[int]] = {}
        for p in paths:
            vals = [it.leaves[p] for it in items]
            if all(v is None for v in vals):
                out[p] = None
            elif isinstance(vals[0], list | tuple):
                out[p] = [t for v in vals for t in v]
            else:
                out[p], lengths[p] = _pad_cat(vals)
        for mpath, (src, axis, dtype) in masks.items():
            if src in out and out[src] is not None and out[mpath] is None:
                lens = lengths.get(src, [])
                full = out[src].shape[axis]
                if any(n != full for n in lens):  # padding happened: the pipeline's mask
                    rows = [torch.arange(full) < n for n in lens]
                    out[mpath] = torch.stack(rows).to(device=out[src].device, dtype=dtype)
        return CondBatch(out, masks)

    def where(self, mask: Tensor, other: CondBatch) -> CondBatch:
        """Row ``i`` of ``self`` where ``mask[i]`` else row ``i`` of ``other``."""
        rows = [self[i] if bool(m) else other[i] for i, m in enumerate(mask.tolist())]
        return CondBatch.cat(rows)


def _pad_cat(vals: list[Tensor]) -> tuple[Tensor, list[int]]:
    """Concatenate on axis 0, zero-padding every other axis at its end; also returns each
    item's length along the first padded axis (for pad masks)."""
    shape = [max(v.shape[d] for v in vals) for d in range(vals[0].ndim)]
    padded, lens = [], []
    ragged = next((d for d in range(1, len(shape)) if any(v.shape[d] != shape[d] for v in vals)),
                  None)
    for v in vals:
        pad: list[int] = []
        for d in reversed(range(1, v.ndim)):
            pad += [0, shape[d] - v.shape[d]]
        padded.append(F.pad(v, pad) if any(pad) else v)
        lens += [v.shape[ragged] if ragged is not None else shape[1] if len(shape) > 1 else 1
                 ] * v.shape[0]
    return torch.cat(padded, 0), lens


__all__ = ["CondBatch", "PadMasks"]
