"""One LoRA'd linear layer of a per-step student (:class:`StepLoRALinear`): the frozen
``base_layer`` plus one ``(lora_A, lora_B)`` pair per step, the active step read from a cell
shared by all layers of a :class:`~fewstep.student.lora.PerStepLoRA` (an O(1) switch)::

    y = base_layer(x) + (alpha / rank) * lora_B_k(lora_A_k(dropout(x)))   (step k active)
    y = base_layer(x)                                                      (no step active)

computed exactly as peft computes it; with float32 weights and no autocast, an optional cached
merged weight ``W + (alpha / rank) B_k A_k`` makes a step cost one matmul (see
:mod:`fewstep.student.lora` for when it is used).
"""

from __future__ import annotations

import math
import sys
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F


def _step_name(k: int) -> str:
    return f"step{k}"


class _StepCell:
    """The state every :class:`StepLoRALinear` of one :class:`PerStepLoRA` reads: the active
    step (``None``: base only); whether merged inference weights may be used at all (``merge``,
    the memory budget); whether the active step's merged weights are current (``merged``, set
    at each switch); and, inside :meth:`PerStepLoRA.merged`, which steps were merged on entry
    (``ready``). A copy (``copy.deepcopy``) starts outside any step and session."""

    __slots__ = ("merge", "merged", "ready", "step")

    def __init__(self, merge: bool = True) -> None:
        self.step: int | None = None
        self.merge = merge
        self.merged = False
        self.ready: list[bool] | None = None

    def __deepcopy__(self, memo: dict[int, Any]) -> _StepCell:
        return _StepCell(self.merge)


class _MergeCache(dict):
    """Merged inference weights per step; copies of a layer start with an empty cache."""

    def __deepcopy__(self, memo: dict[int, Any]) -> _MergeCache:
        return _MergeCache()


class StepLoRALinear(nn.Module):
    """``base_layer`` (an ``nn.Linear``, kept as is) plus one LoRA pair per step.

    ``lora_A[f"step{k}"]``: ``nn.Linear(in, rank, bias=False)``; ``lora_B[...]``:
    ``nn.Linear(rank, out, bias=False)``, zero at init. The active step is read from a cell
    shared by all layers of the owning :class:`PerStepLoRA` (see the module docstring).
    """

    def __init__(self, base_layer: nn.Linear, num_steps: int, rank: int, alpha: float,
                 dropout: float, cell: _StepCell) -> None:
        super().__init__()
        self.base_layer = base_layer
        w = base_layer.weight
        dt = w.dtype if w.dtype.is_floating_point else torch.float32
        fin, fout = base_layer.in_features, base_layer.out_features
        lora_a = {_step_name(k): nn.Linear(fin, rank, bias=False, device=w.device, dtype=dt)
                  for k in range(num_steps)}
        lora_b = {_step_name(k): nn.Linear(rank, fout, bias=False, device=w.device, dtype=dt)
                  for k in range(num_steps)}
        with torch.no_grad():
            for k in range(num_steps):
                nn.init.kaiming_uniform_(lora_a[_step_name(k)].weight, a=math.sqrt(5))
                nn.init.zeros_(lora_b[_step_name(k)].weight)
        self.lora_A = nn.ModuleDict(lora_a)
        self.lora_B = nn.ModuleDict(lora_b)
        self.lora_dropout: nn.Module = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.scaling = alpha / rank
        self.cell = cell
        self._merged: dict[int, tuple[tuple[Any, ...], Tensor, Tensor | None]] = _MergeCache()

    # what callers of the replaced nn.Linear may read
    @property
    def weight(self) -> Tensor:
        return self.base_layer.weight

    @property
    def bias(self) -> Tensor | None:
        return self.base_layer.bias

    @property
    def in_features(self) -> int:
        return self.base_layer.in_features

    @property
    def out_features(self) -> int:
        return self.base_layer.out_features

    def step_weights(self, k: int) -> tuple[nn.Parameter, nn.Parameter]:
        """Step ``k``'s ``(lora_A.weight, lora_B.weight)``: ``(rank, in)`` and ``(out, rank)``."""
        name = _step_name(k)
        return _linear_params(self.lora_A[name])[0], _linear_params(self.lora_B[name])[0]

    def prepare_merged(self, k: int) -> bool:
        """Make the cached ``W + scaling * B_k A_k`` current (rebuilt only when one of the
        three tensors was replaced or changed in place) and return True; return False when
        step ``k`` cannot merge (not float32, or a sharded DTensor). Dropout is the caller's
        check (:meth:`PerStepLoRA.use_step`).

        Runs for every layer at each step switch under inference mode, so the hot path (cache
        hit) is a handful of dictionary lookups and tensor attribute reads.
        """
        name = _step_name(k)
        mods = self._modules
        w, bias = _linear_params(mods["base_layer"])
        a, _ = _linear_params(_child(mods["lora_A"], name))
        b, _ = _linear_params(_child(mods["lora_B"], name))
        if _is_dtensor(w) or _is_dtensor(a) or _is_dtensor(b):  # sharded (FSDP): no merge
            return False
        key = _identity(w, a, b)
        hit = self._merged.get(k)
        if hit is not None and hit[0] == key and hit[2] is bias:
            return True
        f32 = torch.float32
        if not (w.dtype == f32 and a.dtype == f32 and b.dtype == f32):
            return False
        with torch.no_grad():
            self._merged[k] = (key, torch.addmm(w, b, a, alpha=self.scaling), bias)
        return True

    def forward(self, x: Tensor) -> Tensor:
        cell = self.cell
        k = cell.step
        if k is None:
            return self.base_layer(x)
        if cell.merged and not torch.is_grad_enabled():
            # prepared by PerStepLoRA.use_step / merged: the cache holds step k's merged weight
            _, weight, bias = self._merged[k]
            return F.linear(x, weight, bias)
        name = _step_name(k)
        lora_a, lora_b = self.lora_A[name], self.lora_B[name]
        result = self.base_layer(x)
        dtype = result.dtype
        a_dtype = _linear_params(lora_a)[0].dtype
        if x.dtype != a_dtype:
            x = x.to(a_dtype)
        result = result + lora_b(lora_a(self.lora_dropout(x))) * self.scaling
        return result.to(dtype)

    def extra_repr(self) -> str:
        return f"steps={len(self.lora_A)}, scaling={self.scaling:g}"


def _child(m: nn.Module | None, name: str) -> nn.Module | None:
    """``m[name]`` of a ``ModuleDict``, read from its module dict."""
    return None if m is None else m._modules[name]


def _linear_params(m: nn.Module | None) -> tuple[nn.Parameter, nn.Parameter | None]:
    """``(m.weight, m.bias)`` of a linear layer, read from its parameter dict: this runs per
    layer at each step switch, and skips ``Module.__getattr__``."""
    w = None if m is None else m._parameters.get("weight")
    if m is None or w is None:
        raise TypeError(f"expected a linear layer with a weight, got {type(m).__name__}")
    return w, m._parameters.get("bias")


def _is_dtensor(t: Tensor) -> bool:
    """A sharded (FSDP2) tensor? Without importing ``torch.distributed.tensor`` (0.6 s): no
    tensor can be a DTensor unless that module was imported."""
    mod = sys.modules.get("torch.distributed.tensor")
    return mod is not None and isinstance(t, mod.DTensor)


def _identity(*tensors: Tensor) -> tuple[int, ...]:
    """Storage addresses and version counters: changes when a tensor is replaced or modified in
    place (an inference tensor has no version counter, and cannot change: -1)."""
    return tuple(t.data_ptr() for t in tensors) + tuple(_version(t) for t in tensors)


def _version(t: Tensor) -> int:
    try:
        return int(t._version)
    except RuntimeError:
        return -1
