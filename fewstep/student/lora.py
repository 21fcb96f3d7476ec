"""Per-step LoRA: one shared frozen base, one LoRA adapter per student step.

Works on any ``nn.Module`` with ``nn.Linear`` layers (a plain MLP, a diffusers transformer, a
fewstep :class:`~fewstep.Denoiser` wrapping either). Every targeted ``nn.Linear`` is replaced
in place by a :class:`StepLoRALinear` holding the original layer as ``base_layer`` and one
``(lora_A, lora_B)`` pair per step, named ``step0``, ``step1``, ... (the parameter names follow
peft: ``<layer>.base_layer.weight``, ``<layer>.lora_A.step0.weight``). ``lora_A`` is
Kaiming-uniform, ``lora_B`` starts at zero, so every step starts equal to the base model:

    y = base_layer(x) + (alpha / rank) * lora_B_k(lora_A_k(dropout(x)))   (step k active)
    y = base_layer(x)                                                      (no step active)

computed exactly as peft computes it (the same operations in the same order and dtypes), so
adapters exported in the diffusers / peft format reproduce the student bit for bit.

Usage::

    lora = PerStepLoRA(base, num_steps=2, rank=8, target_modules=ZIMAGE_LORA_TARGETS)
    x0_1 = lora.step_forward(0, x1, s1, c)          # or: with lora.use_step(0): base(...)
    x2 = transition(...)                              # no detach: end-to-end
    x0_2 = lora.step_forward(1, x2, s2, c)
    loss(x0_2).backward()                             # grads reach step1 AND step0 adapters

Switching steps is O(1) in training: every LoRA layer reads the active step from one shared
cell, so a switch never walks the layers and never touches ``requires_grad`` (a leaf whose
``requires_grad`` is False at *backward* time silently gets no gradient, which is why peft's
``set_adapter`` cannot be used to switch inside one graph).

Fast inference: with float32 weights and no autocast, a layer can use a cached merged weight
``W + (alpha / rank) B_k A_k`` (one matmul, the cost of the base) while the K cached copies fit
:attr:`PerStepLoRA.merge_budget_bytes`. Two ways:

* under ``torch.inference_mode()`` a switch checks each layer's cache against its three
  tensors (rebuilt when one was replaced or changed in place): automatic and always current;
* inside :meth:`PerStepLoRA.merged` (under ``no_grad`` or ``inference_mode``) every step is
  merged once, on entry, and a switch is O(1) again: what samplers use (the weights must not
  change inside the block).

The result equals the unmerged computation up to float32 rounding (~1e-7 relative; more after
an ill-conditioned output conversion such as an epsilon network's ``/ (1 - sigma)`` near
sigma = 1). Everywhere else (training, plain ``torch.no_grad``, other dtypes) the layers compute
exactly what peft computes, so a student sampled under ``no_grad`` matches its diffusers export
bit for bit.

Gradient checkpointing recomputes forwards during backward, when another adapter may be
active; use :meth:`PerStepLoRA.checkpoint_fn` as the checkpointing function (diffusers:
``model.enable_gradient_checkpointing(lora.checkpoint_fn)``), which replays the step that was
active in forward.

Target modules are given as name patterns: a plain string matches a module whose qualified
name equals it or ends with ``"." + pattern`` (``"to_q"``, ``"to_out.0"``); a string starting
with ``"re:"`` is a regular expression that must match the full name. ``None`` targets every
``nn.Linear``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from typing import Any

import torch
from torch import Tensor, nn

from fewstep.student.lora_layer import (
    StepLoRALinear,
    _step_name,
    _StepCell,
)


def _matches(name: str, pattern: str) -> bool:
    if pattern.startswith("re:"):
        return re.fullmatch(pattern[3:], name) is not None
    return name == pattern or name.endswith("." + pattern)


def find_lora_targets(model: nn.Module, patterns: Sequence[str] | None = None,
                      rank: int | None = None) -> list[str]:
    """Qualified names of the ``nn.Linear`` layers of ``model`` matched by ``patterns``.

    Raises ``ValueError`` if nothing matches, or if ``rank`` exceeds
    ``min(in_features, out_features)`` of a matched layer.
    """
    names = []
    for name, mod in model.named_modules():
        if not isinstance(mod, nn.Linear) or not name:
            continue
        if patterns is None or any(_matches(name, p) for p in patterns):
            if rank is not None and rank > min(mod.in_features, mod.out_features):
                raise ValueError(
                    f"LoRA rank {rank} exceeds the dimension of layer {name!r} "
                    f"(in_features={mod.in_features}, out_features={mod.out_features}); use "
                    f"rank <= {min(mod.in_features, mod.out_features)} or exclude this layer")
            names.append(name)
    if not names:
        raise ValueError(f"no nn.Linear layer of {type(model).__name__} matches {patterns!r}")
    return names


class PerStepLoRA(nn.Module):
    """A frozen ``base`` with ``num_steps`` LoRA adapters ``step0 .. step{K-1}``.

    Args:
        base: the module to adapt in place (its targeted ``nn.Linear`` layers are replaced by
            :class:`StepLoRALinear`; its own parameters are frozen and stay the same tensors,
            so a base whose weights are shared with a teacher stays shared).
        num_steps: K, the number of student steps.
        rank, alpha, dropout: LoRA hyper-parameters (scale ``alpha / rank``).
        target_modules: name patterns (see module docstring); ``None``: all ``nn.Linear``.
        merge_budget_bytes: merged inference weights are used while the K merged copies of
            the targeted weights take at most this many bytes (module docstring).

    ``forward(k, *args, **kwargs)`` = :meth:`step_forward`.
    """

    def __init__(self, base: nn.Module, num_steps: int, rank: int = 8, alpha: float | None = None,
                 dropout: float = 0.0, target_modules: Sequence[str] | None = None,
                 merge_budget_bytes: int = 512 * 2**20) -> None:
        super().__init__()
        if num_steps < 1:
            raise ValueError("num_steps must be >= 1")
        if rank < 1:
            raise ValueError("rank must be >= 1")
        self.targets = find_lora_targets(base, target_modules, rank)
        self.num_steps = num_steps
        self.rank = rank
        self.alpha = float(alpha if alpha is not None else rank)
        self.dropout = dropout
        self.target_patterns = None if target_modules is None else list(target_modules)
        for p in base.parameters():
            p.requires_grad_(False)
        self.cell = _StepCell()
        layers: list[StepLoRALinear] = []
        for name in self.targets:
            parent_name, _, attr = name.rpartition(".")
            parent = base.get_submodule(parent_name) if parent_name else base
            lin = getattr(parent, attr)
            layer = StepLoRALinear(lin, num_steps, rank, self.alpha, dropout, self.cell)
            setattr(parent, attr, layer)
            layers.append(layer)
        self.base = base
        self._layers = layers
        self._trainable = [True] * num_steps
        # per-step (name, parameter) lists, built once: no walk over the model afterwards
        self._step_params: list[list[tuple[str, nn.Parameter]]] = [[] for _ in range(num_steps)]
        for name, layer in zip(self.targets, layers, strict=True):
            for k in range(num_steps):
                s = _step_name(k)
                a, b = layer.step_weights(k)
                self._step_params[k] += [(f"{name}.lora_A.{s}.weight", a),
                                         (f"{name}.lora_B.{s}.weight", b)]
        self.merge_budget_bytes = merge_budget_bytes

    # -- parameters ---------------------------------------------------------------------------
    def lora_layers(self) -> list[tuple[str, StepLoRALinear]]:
        """``(qualified name in base, layer)`` of every LoRA layer."""
        return list(zip(self.targets, self._layers, strict=True))

    def named_step_parameters(self, k: int) -> Iterator[tuple[str, nn.Parameter]]:
        """``(qualified name in base, parameter)`` of step ``k``'s adapter."""
        yield from self._step_params[k]

    def step_parameters(self, k: int) -> list[nn.Parameter]:
        """Trainable parameters of step ``k`` (disjoint across steps)."""
        return [p for _, p in self._step_params[k]]

    def base_parameters(self) -> list[nn.Parameter]:
        """The frozen shared parameters (everything that is not a LoRA weight)."""
        return [p for n, p in self.base.named_parameters() if ".lora_" not in n]

    def set_trainable(self, k: int, trainable: bool) -> None:
        """Freeze / unfreeze step ``k``'s adapter (switching steps never changes it)."""
        self._trainable[k] = trainable
        for p in self.step_parameters(k):
            p.requires_grad_(trainable)

    def adapter_state_dict(self, k: int) -> dict[str, Tensor]:
        """Step ``k``'s LoRA weights in the peft / diffusers key format, relative to ``base``:
        ``<layer>.lora_A.weight`` ``(rank, in)`` and ``<layer>.lora_B.weight`` ``(out, rank)``."""
        tag = f".{_step_name(k)}."
        return {n.replace(tag, "."): p.detach() for n, p in self._step_params[k]}

    def load_adapter_state_dict(self, k: int, state: dict[str, Tensor]) -> None:
        """Inverse of :meth:`adapter_state_dict` (strict on names and shapes; the adapter takes
        the dtype of ``state``)."""
        tag = f".{_step_name(k)}."
        own = {n.replace(tag, "."): p for n, p in self._step_params[k]}
        if set(state) != set(own):
            missing, extra = set(own) - set(state), set(state) - set(own)
            raise KeyError(f"adapter keys differ: missing {sorted(missing)[:5]}, "
                           f"unexpected {sorted(extra)[:5]}")
        with torch.no_grad():
            for n, t in state.items():
                if own[n].shape != t.shape:
                    raise ValueError(f"{n}: shape {tuple(t.shape)} != {tuple(own[n].shape)}")
                own[n].data = t.detach().to(own[n].device).clone()

    def adapter_config(self) -> dict[str, Any]:
        """peft ``LoraConfig`` keyword arguments of every adapter (diffusers stores them as the
        ``lora_adapter_metadata`` of a LoRA file)."""
        return {"r": self.rank, "lora_alpha": self.alpha, "lora_dropout": self.dropout,
                "target_modules": list(self.targets), "bias": "none", "use_dora": False,
                "use_rslora": False, "init_lora_weights": True}

    def base_state_dict(self) -> dict[str, Tensor]:
        """The base's non-LoRA weights under their *original* (pre-injection) names."""
        return {n.replace(".base_layer.", "."): t
                for n, t in self.base.state_dict().items() if ".lora_" not in n}

    # -- switching ----------------------------------------------------------------------------
    @property
    def merge_budget_bytes(self) -> int:
        return self._merge_budget

    @merge_budget_bytes.setter
    def merge_budget_bytes(self, budget: int) -> None:
        """Allow merged inference weights iff K merged float32 copies fit ``budget`` bytes."""
        self._merge_budget = int(budget)
        need = self.num_steps * sum(4 * layer.base_layer.weight.numel()
                                    for _, layer in self.lora_layers())
        self.cell.merge = need <= self._merge_budget
        self.cell.merged, self.cell.ready = False, None
        for _, layer in self.lora_layers():
            layer._merged.clear()

    def _select(self, k: int | None) -> None:
        self.cell.step = k

    @property
    def active_step(self) -> int | None:
        return self.cell.step

    def _enter(self, k: int | None) -> tuple[int | None, bool]:
        """Make step ``k`` active; returns the state that :meth:`_exit` restores."""
        if k is not None and not 0 <= k < self.num_steps:
            raise IndexError(f"step {k} out of range [0, {self.num_steps})")
        cell = self.cell
        prev = cell.step, cell.merged
        cell.step = k
        if k is None:
            cell.merged = False
        elif cell.ready is not None:  # inside merged(): prepared on entry
            cell.merged = cell.ready[k]
        else:
            cell.merged = torch.is_inference_mode_enabled() and self._prepare_merged(k)
        return prev

    def _exit(self, prev: tuple[int | None, bool]) -> None:
        self.cell.step, self.cell.merged = prev

    @contextmanager
    def use_step(self, k: int | None) -> Iterator[None]:
        """Activate step ``k``'s adapter (``None``: base only) inside the block, then restore."""
        prev = self._enter(k)
        try:
            yield
        finally:
            self._exit(prev)

    def _prepare_merged(self, k: int) -> bool:
        """Make every layer's merged weight for step ``k`` current (rebuilt only where a tensor
        changed) and return True, when merging is allowed (budget, no active dropout, no
        autocast, float32, not sharded); otherwise return False (the layers then compute the
        unmerged sum)."""
        if not self.cell.merge or (self.dropout > 0 and self.base.training):
            return False
        layers = self._layers
        if torch.is_autocast_enabled(layers[0].base_layer.weight.device.type):
            return False
        return all([layer.prepare_merged(k) for layer in layers])  # all or none: no short cut

    @contextmanager
    def merged(self) -> Iterator[None]:
        """Sample with per-step merged weights built once, on entry (like peft's
        ``merge_adapter``): inside the block a step switch costs O(1) and walks no layer.

        Without this block, merged weights are still used under ``torch.inference_mode`` but
        checked against the adapters at every switch (one cache lookup per layer). Inside it
        they are not checked: the weights must not change inside the block. Forwards that
        record gradients use the unmerged sum, so training inside the block stays correct.
        Enter under ``torch.no_grad()`` or ``torch.inference_mode()``; with merging not
        allowed (budget, dtype, autocast, dropout) the block changes nothing.
        """
        if torch.is_grad_enabled():
            raise RuntimeError("PerStepLoRA.merged() is for sampling: enter it under "
                               "torch.no_grad() or torch.inference_mode()")
        cell = self.cell
        prev = cell.ready, cell.merged
        cell.ready = [self._prepare_merged(k) for k in range(self.num_steps)]
        cell.merged = cell.step is not None and cell.ready[cell.step]
        try:
            yield
        finally:
            cell.ready, cell.merged = prev

    #: Alias of :meth:`use_step`.
    use = use_step

    def step_forward(self, k: int | None, *args: Any, **kwargs: Any) -> Any:
        """``base(*args, **kwargs)`` with step ``k``'s adapter active (= ``use_step`` without
        the generator-based context manager, which costs measurably per sampling step)."""
        prev = self._enter(k)
        try:
            return self.base(*args, **kwargs)
        finally:
            self._exit(prev)

    def forward(self, k: int | None, *args: Any, **kwargs: Any) -> Any:
        return self.step_forward(k, *args, **kwargs)

    def step_fn(self) -> Callable[[int, Tensor, Tensor, Any], Tensor]:
        """A :data:`fewstep.core.samplers.StepFn`: ``(k, x, sigma, cond) -> x0_hat`` of step k."""
        return lambda k, x, sigma, cond: self.step_forward(k, x, sigma, cond)

    def checkpoint_fn(self, module: Callable[..., Any], *args: Any) -> Any:
        """Non-reentrant activation checkpointing that recomputes under the adapter that was
        active in forward (signature of diffusers' ``gradient_checkpointing_func``)."""
        k = self.cell.step

        def contexts() -> tuple[Any, Any]:
            return nullcontext(), self.use_step(k)

        return torch.utils.checkpoint.checkpoint(module, *args, use_reentrant=False,
                                                 context_fn=contexts)


__all__ = ["PerStepLoRA", "StepLoRALinear", "find_lora_targets"]
