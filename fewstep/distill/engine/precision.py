"""Mixed precision for the training loop, and logging without a host sync per step.

``train.mixed_precision``:

* ``auto`` (default): ``bf16`` on CUDA when the GPU supports it, else ``no`` (CPU, MPS, old
  GPUs);
* ``bf16``: ``torch.autocast(dtype=bfloat16)``; bfloat16 has float32's exponent range, so no
  loss scaling is needed;
* ``fp16``: ``torch.autocast(dtype=float16)`` with a ``torch.amp.GradScaler``: the loss is
  multiplied by a scale before backward, gradients are unscaled before clipping, a step whose
  gradients overflowed is *skipped* (the scale is halved) instead of diverging;
* ``no``: float32.

Master weights, gradients and optimizer moments stay float32 in every mode (autocast only
changes the dtype of the computation).

Host syncs: ``float(t)``, ``bool(torch.isfinite(t))`` and ``.item()`` wait for the GPU to finish
everything queued. :class:`DeferredLogs` keeps each step's scalar logs on the device and reads
them all with one transfer every ``train.log_every`` steps (and before a checkpoint), where
the non-finite check (divergence) happens too.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor

from fewstep.errors import ConfigError

log = logging.getLogger(__name__)

Mode = Literal["auto", "no", "bf16", "fp16"]


def resolve_mode(mode: str, device: torch.device) -> Literal["no", "bf16", "fp16"]:
    """The concrete mode for ``device`` (``auto``: bf16 on CUDA with bf16 support, else no).

    Raises :class:`ConfigError` naming ``train.mixed_precision`` for fp16 where torch has no
    gradient scaler for the device (MPS on old torch builds)."""
    if mode == "auto":
        if device.type == "cuda" and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
            return "bf16"
        return "no"
    if mode not in ("no", "bf16", "fp16"):
        raise ConfigError(f"train.mixed_precision: {mode!r} is not one of auto, no, bf16, fp16")
    if mode == "fp16" and device.type not in ("cuda", "cpu"):
        raise ConfigError(f"train.mixed_precision: fp16 needs a gradient scaler, which this "
                          f"PyTorch lacks for {device.type}; use bf16 or no")
    return mode  # type: ignore[return-value]


class Precision:
    """Autocast and (for fp16) loss scaling for one device.

    Usage per update::

        with prec.autocast():
            loss = ...
        prec.backward(loss)
        prec.unscale_(opt)            # gradients in true units (before the norm / clipping)
        norm = ...; clip(...)
        prec.step(opt)                # skipped by the scaler if a gradient overflowed (fp16)
        prec.update()                 # once per update, after every optimizer's step

    Each optimizer is unscaled and stepped at most once between :meth:`update` calls.
    """

    def __init__(self, mode: str, device: torch.device) -> None:
        self.mode = resolve_mode(mode, device)
        self.device = device
        self.scaler: torch.amp.GradScaler | None = None
        if self.mode == "fp16":
            self.scaler = torch.amp.GradScaler(device.type)

    @property
    def dtype(self) -> torch.dtype | None:
        return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.mode)

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def backward(self, loss: Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def unscale_(self, opt: torch.optim.Optimizer) -> None:
        if self.scaler is not None:
            self.scaler.unscale_(opt)

    def step(self, opt: torch.optim.Optimizer) -> None:
        if self.scaler is not None:
            self.scaler.step(opt)
        else:
            opt.step()

    def update(self) -> None:
        if self.scaler is not None:
            self.scaler.update()

    @property
    def skips_overflow(self) -> bool:
        """``True`` if a non-finite *gradient* is an expected, skipped step (fp16)."""
        return self.scaler is not None

    def state_dict(self) -> dict[str, float]:
        """The scaler's state (empty without one) for checkpoints."""
        if self.scaler is None:
            return {}
        return {k: float(v) for k, v in self.scaler.state_dict().items()
                if isinstance(v, (int, float))}

    def load_state_dict(self, sd: Mapping[str, float]) -> None:
        if self.scaler is not None and sd:
            st = dict(sd)
            for k in ("_growth_tracker", "growth_interval"):  # ints (torch checks the type)
                if k in st:
                    st[k] = int(st[k])
            self.scaler.load_state_dict(st)


class ScalerState:
    """The fp16 loss scaler as checkpoint tensors, so a resumed fp16 run continues with the
    scale and growth counter of the interrupted one (bit-identically; restarting at the
    initial scale would make the first resumed steps overflow and be skipped where the
    uninterrupted run stepped).

    ``state_dict()`` -> ``{"scale": float64 (1,), "growth_tracker": int64 (1,)}`` (float64
    holds the float32 scale exactly); ``load_state_dict`` restores them. An empty state (a
    checkpoint written before the scaler was recorded) keeps the initial scale, with a
    warning that the resume is not bit-identical."""

    def __init__(self, prec: Precision) -> None:
        assert prec.scaler is not None
        self.prec = prec
        self.scaler: torch.amp.GradScaler = prec.scaler  # made once, with the Precision

    def state_dict(self) -> dict[str, Tensor]:
        sd = self.scaler.state_dict()
        return {"scale": torch.tensor([float(sd["scale"])], dtype=torch.float64),
                "growth_tracker": torch.tensor([int(sd["_growth_tracker"])], dtype=torch.int64)}

    def load_state_dict(self, sd: Mapping[str, Tensor]) -> None:
        if not sd:
            log.warning("resume: this checkpoint predates the fp16 loss-scale record; the "
                        "scale restarts at its initial value (not bit-identical)")
            return
        st = self.scaler.state_dict()
        st["scale"] = float(sd["scale"][0])
        st["_growth_tracker"] = int(sd["growth_tracker"][0])
        self.prec.load_state_dict(st)


def stack_scalars(values: list[Tensor]) -> Tensor:
    """``(N,)`` float32 means of ``values`` on their accelerator device, if any (log terms may
    mix device tensors with host scalars such as a step index; ``torch.stack`` would refuse).
    Host values move to the device (no host sync); nothing moves to the host."""
    dev = next((v.device for v in values if v.device.type != "cpu"), values[0].device)
    return torch.stack([v.detach().float().mean().to(dev) for v in values])


@dataclass
class DeferredLogs:
    """Per-step scalar logs kept on the device; one host transfer per :meth:`flush`.

    ``add(step, logs)`` stacks the step's terms into one small device tensor (no sync);
    ``flush()`` copies every pending row to the host at once and returns
    ``[{"step": s, name: value, ...}, ...]`` in step order, plus the first non-finite term (or
    ``None``), which the trainer turns into a divergence error naming the step. Terms listed
    in ``allow_nonfinite`` (e.g. ``grad_norm`` under fp16 loss scaling, where an overflow is a
    skipped step) are reported but not treated as divergence.
    """

    allow_nonfinite: tuple[str, ...] = ()
    _rows: list[tuple[int, list[str], Tensor]] = field(default_factory=list)

    def add(self, step: int, logs: Mapping[str, Tensor]) -> None:
        if not logs:
            self._rows.append((step, [], torch.zeros(0)))
            return
        keys = list(logs)
        vals = stack_scalars([logs[k] for k in keys])
        self._rows.append((step, keys, vals))

    def __len__(self) -> int:
        return len(self._rows)

    def clear(self) -> None:
        """Drop the pending rows (after a rollback they belong to a discarded branch)."""
        self._rows.clear()

    def flush(self) -> tuple[list[dict[str, float]], tuple[int, str, float] | None]:
        """``(records, first_bad)``: host values of every pending row (one transfer) and the
        first ``(step, name, value)`` that is NaN / Inf, or ``None``."""
        if not self._rows:
            return [], None
        flat = [v for _, _, v in self._rows if v.numel()]
        host = torch.cat(flat).cpu().tolist() if flat else []  # the one host sync
        out: list[dict[str, float]] = []
        bad: tuple[int, str, float] | None = None
        i = 0
        for step, keys, _ in self._rows:
            rec: dict[str, float] = {"step": step}
            for k in keys:
                v = float(host[i])
                i += 1
                rec[k] = v
                if bad is None and not math.isfinite(v) and k not in self.allow_nonfinite:
                    bad = (step, k, v)
            out.append(rec)
        self._rows.clear()
        return out, bad


__all__ = ["DeferredLogs", "Precision", "ScalerState", "resolve_mode"]
