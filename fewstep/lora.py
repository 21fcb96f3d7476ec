"""Per-step LoRA: one shared frozen base, one peft LoRA adapter per student step.

Works on any ``nn.Module`` with ``nn.Linear`` layers (a plain MLP, a diffusers transformer, a
fewstep :class:`~fewstep.Denoiser` wrapping either). Adapters are named ``step0``, ``step1``,
...; ``lora_B`` starts at zero, so every step starts equal to the base model.

Usage::

    lora = PerStepLoRA(teacher_copy, num_steps=2, rank=8, target_modules=ZIMAGE_LORA_TARGETS)
    x0_1 = lora.step_forward(0, x1, s1, c)          # or: with lora.use_step(0): base(...)
    x2 = transition(...)                              # no detach: end-to-end
    x0_2 = lora.step_forward(1, x2, s2, c)
    loss(x0_2).backward()                             # grads reach step1 AND step0 adapters

Why not ``peft``'s ``set_adapter`` alone: it sets ``requires_grad=False`` on inactive adapters,
and autograd silently skips accumulating into a leaf whose ``requires_grad`` is False at
*backward* time, so step 0 would get no gradient from a loss computed after switching to
step 1. :class:`PerStepLoRA` switches the active adapter and then restores every adapter's
``requires_grad`` to the state it tracks (all trainable by default; see :meth:`set_trainable`).

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
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from typing import Any

import torch
from torch import Tensor, nn


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


def _step_name(k: int) -> str:
    return f"step{k}"


class PerStepLoRA(nn.Module):
    """A frozen ``base`` with ``num_steps`` LoRA adapters ``step0 .. step{K-1}`` (peft).

    Args:
        base: the module to adapt in place (its own parameters are frozen).
        num_steps: K, the number of student steps.
        rank, alpha, dropout: LoRA hyper-parameters (scale ``alpha / rank``).
        target_modules: name patterns (see module docstring); ``None``: all ``nn.Linear``.
        init_lora_weights: forwarded to peft (``True``: ``lora_B = 0``).

    ``forward(k, *args, **kwargs)`` = :meth:`step_forward`.
    """

    def __init__(self, base: nn.Module, num_steps: int, rank: int = 8, alpha: float | None = None,
                 dropout: float = 0.0, target_modules: Sequence[str] | None = None,
                 init_lora_weights: bool | str = True) -> None:
        super().__init__()
        from peft import LoraConfig, inject_adapter_in_model

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
        regex = "^(" + "|".join(re.escape(n) for n in self.targets) + ")$"
        for k in range(num_steps):
            cfg = LoraConfig(r=rank, lora_alpha=self.alpha, lora_dropout=dropout,
                             target_modules=regex, init_lora_weights=init_lora_weights)
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*peft_config.*")
                base = inject_adapter_in_model(cfg, base, adapter_name=_step_name(k))
        self.base = base
        self._trainable = [True] * num_steps
        self._active: int | None = None
        self._select(None)

    # -- parameters ---------------------------------------------------------------------------
    def _tuner_layers(self) -> Iterator[nn.Module]:
        from peft.tuners.tuners_utils import BaseTunerLayer

        for m in self.base.modules():
            if isinstance(m, BaseTunerLayer):
                yield m

    def named_step_parameters(self, k: int) -> Iterator[tuple[str, nn.Parameter]]:
        """``(qualified name in base, parameter)`` of step ``k``'s adapter."""
        tag = f".{_step_name(k)}."
        for name, p in self.base.named_parameters():
            if ".lora_" in name and tag in name + ".":
                yield name, p

    def step_parameters(self, k: int) -> list[nn.Parameter]:
        """Trainable parameters of step ``k`` (disjoint across steps)."""
        return [p for _, p in self.named_step_parameters(k)]

    def base_parameters(self) -> list[nn.Parameter]:
        """The frozen shared parameters (everything that is not a LoRA weight)."""
        return [p for n, p in self.base.named_parameters() if ".lora_" not in n]

    def set_trainable(self, k: int, trainable: bool) -> None:
        """Freeze / unfreeze step ``k``'s adapter (kept across adapter switches)."""
        self._trainable[k] = trainable
        self._restore_requires_grad()

    def _restore_requires_grad(self) -> None:
        for k in range(self.num_steps):
            for p in self.step_parameters(k):
                p.requires_grad_(self._trainable[k])

    def adapter_state_dict(self, k: int) -> dict[str, Tensor]:
        """Step ``k``'s LoRA weights with the adapter name replaced by ``{step}``."""
        tag = _step_name(k)
        return {n.replace(f".{tag}.", ".{step}."): p.detach()
                for n, p in self.named_step_parameters(k)}

    def load_adapter_state_dict(self, k: int, state: dict[str, Tensor]) -> None:
        """Inverse of :meth:`adapter_state_dict` (strict on names and shapes)."""
        own = dict(self.named_step_parameters(k))
        tag = _step_name(k)
        renamed = {n.replace(".{step}.", f".{tag}."): t for n, t in state.items()}
        if set(renamed) != set(own):
            missing, extra = set(own) - set(renamed), set(renamed) - set(own)
            raise KeyError(f"adapter keys differ: missing {sorted(missing)[:5]}, "
                           f"unexpected {sorted(extra)[:5]}")
        with torch.no_grad():
            for n, t in renamed.items():
                own[n].copy_(t)

    def base_state_dict(self) -> dict[str, Tensor]:
        """The base's non-LoRA weights under their *original* (pre-injection) names."""
        return {n.replace(".base_layer.", "."): t
                for n, t in self.base.state_dict().items() if ".lora_" not in n}

    # -- switching ----------------------------------------------------------------------------
    def _select(self, k: int | None) -> None:
        # ``None`` = no adapter: peft layers with an empty active list compute the base only.
        names: list[str] = [] if k is None else [_step_name(k)]
        for layer in self._tuner_layers():
            layer.set_adapter(names)
        self._restore_requires_grad()
        self._active = k

    @property
    def active_step(self) -> int | None:
        return self._active

    @contextmanager
    def use_step(self, k: int | None) -> Iterator[None]:
        """Activate step ``k``'s adapter (``None``: base only) inside the block, then restore."""
        if k is not None and not 0 <= k < self.num_steps:
            raise IndexError(f"step {k} out of range [0, {self.num_steps})")
        prev = self._active
        if prev == k:
            yield
            return
        self._select(k)
        try:
            yield
        finally:
            self._select(prev)

    #: Alias of :meth:`use_step`.
    use = use_step

    def step_forward(self, k: int | None, *args: Any, **kwargs: Any) -> Any:
        """``base(*args, **kwargs)`` with step ``k``'s adapter active."""
        with self.use_step(k):
            return self.base(*args, **kwargs)

    def forward(self, k: int | None, *args: Any, **kwargs: Any) -> Any:
        return self.step_forward(k, *args, **kwargs)

    def step_fn(self) -> Callable[[int, Tensor, Tensor, Any], Tensor]:
        """A :data:`fewstep.samplers.StepFn` ``(k, x, sigma, cond) -> base(x, sigma, cond)``."""
        return lambda k, x, sigma, cond: self.step_forward(k, x, sigma, cond)

    def checkpoint_fn(self, module: Callable[..., Any], *args: Any) -> Any:
        """Non-reentrant activation checkpointing that recomputes under the adapter that was
        active in forward (signature of diffusers' ``gradient_checkpointing_func``)."""
        k = self._active

        def contexts() -> tuple[Any, Any]:
            return nullcontext(), self.use_step(k)

        return torch.utils.checkpoint.checkpoint(module, *args, use_reentrant=False,
                                                 context_fn=contexts)


__all__ = ["PerStepLoRA", "find_lora_targets"]
