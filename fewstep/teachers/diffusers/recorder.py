"""Record what a pipeline's own ``__call__`` does, with hooks (the pipeline is not edited).

* every call of the denoiser: its ``(args, kwargs)`` and output (forward pre-hook + forward hook,
  ``with_kwargs=True``) -- or, with ``stub=True``, its inputs only: ``net.forward`` is swapped
  for a stub returning zeros shaped like ``stub_output(args, kwargs)``, so text encoding and
  latent preparation run but the network does not;
* every ``scheduler.step(model_output, timestep, sample, ...)``: its arguments and result;
* a deep copy of the scheduler as ``__call__`` set it up, taken at the first denoiser call.

``stop`` ends the call early by raising :class:`StopRecording` from a hook: ``"forward:K"``
after the K-th denoiser call, ``"step:K"`` at the K-th scheduler step, ``None`` runs to the end.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from fewstep.teachers.diffusers.call_tree import clone_leaf

DENOISER_NAMES = ("transformer", "unet")


class StopRecording(Exception):
    """Raised from a hook to end ``__call__`` early (caught by :func:`record`)."""


@dataclass
class Forward:
    """One denoiser call: its arguments, output and the scheduler step it belongs to."""

    args: tuple
    kwargs: dict
    output: Any = None
    step: int = 0


@dataclass
class Step:
    """One ``scheduler.step``: its arguments and result (``prev``)."""

    model_output: torch.Tensor
    timestep: Any
    sample: torch.Tensor
    kwargs: dict
    prev: torch.Tensor | None = None


@dataclass
class Recording:
    """Everything one recorded ``__call__`` did (see module docstring)."""

    forwards: list[Forward] = field(default_factory=list)
    steps: list[Step] = field(default_factory=list)
    scheduler: Any = None
    result: Any = None
    call_kwargs: dict = field(default_factory=dict)

    def forwards_of_step(self, k: int) -> list[Forward]:
        """The denoiser calls of scheduler step ``k``."""
        return [f for f in self.forwards if f.step == k]


def denoiser_of(pipe: Any, name: str | None = None) -> tuple[str, nn.Module]:
    """The pipeline's denoiser component (``name`` or the first of transformer / unet)."""
    comps = getattr(pipe, "components", {})
    for n in ([name] if name else DENOISER_NAMES):
        m = comps.get(n) if n else None
        if isinstance(m, nn.Module):
            return n, m
    raise ValueError(f"{type(pipe).__name__} has no denoiser component "
                     f"({' / '.join([name] if name else DENOISER_NAMES)}); a family entry names "
                     "another one (Family.denoiser)")


def _clone(v: Any) -> Any:
    if isinstance(v, dict):
        return {k: _clone(x) for k, x in v.items()}
    if isinstance(v, list | tuple) and not all(torch.is_tensor(t) for t in v):
        return type(v)(_clone(x) for x in v) if isinstance(v, tuple) else [_clone(x) for x in v]
    return clone_leaf(v)


def _gen_copy(g: torch.Generator) -> torch.Generator:
    """A generator in ``g``'s current state (replays a stochastic step's draws)."""
    out = torch.Generator(device=g.device)
    out.set_state(g.get_state())
    return out


@torch.no_grad()
def record(pipe: Any, call_kwargs: dict, stop: str | None = None, stub: bool = False,
           stub_output: Callable[[tuple, dict], Any] | None = None,
           denoiser: str | None = None) -> Recording:
    """Run ``pipe(**call_kwargs)`` under hooks (see module docstring)."""
    _, net = denoiser_of(pipe, denoiser)
    rec = Recording(call_kwargs=dict(call_kwargs))
    kind, _, num = (stop or "").partition(":")
    limit = int(num) if num else 1
    sched = pipe.scheduler
    orig_step = sched.step
    state = {"step": 0}

    def pre(_m: nn.Module, args: tuple, kwargs: dict) -> None:
        if rec.scheduler is None:
            rec.scheduler = copy.deepcopy(pipe.scheduler)
            rec.scheduler.__dict__.pop("step", None)  # our wrapper, not the scheduler's
        rec.forwards.append(Forward(_clone(args), _clone(kwargs), step=state["step"]))

    def post(_m: nn.Module, args: tuple, kwargs: dict, out: Any) -> None:
        rec.forwards[-1].output = _clone(out)
        if kind == "forward" and len(rec.forwards) >= limit:
            raise StopRecording

    @functools.wraps(orig_step)  # pipelines read step's signature (accepts eta / generator)
    def step(model_output: Any, timestep: Any, sample: Any, *a: Any, **kw: Any) -> Any:
        kw_saved = {k: _gen_copy(v) if isinstance(v, torch.Generator) else v for k, v in kw.items()}
        s = Step(_clone(model_output), _clone(timestep), _clone(sample), kw_saved)
        if kind == "step" and state["step"] + 1 >= limit:
            rec.steps.append(s)
            raise StopRecording
        out = orig_step(model_output, timestep, sample, *a, **kw)
        s.prev = _clone(out[0] if isinstance(out, tuple) else out.prev_sample)
        rec.steps.append(s)
        state["step"] += 1
        return out

    handles = [net.register_forward_pre_hook(pre, with_kwargs=True),
               net.register_forward_hook(post, with_kwargs=True)]
    # instance attributes we shadow (accelerate's offload hooks wrap forward this way)
    prev_forward, prev_step = net.__dict__.get("forward"), sched.__dict__.get("step")
    if stub:
        if stub_output is None:
            raise ValueError("stub=True needs stub_output")

        def fake_forward(*args: Any, **kwargs: Any) -> Any:
            return stub_output(args, kwargs)
        net.forward = fake_forward
    sched.step = step
    try:
        rec.result = pipe(**call_kwargs)
    except StopRecording:
        pass
    finally:
        for h in handles:
            h.remove()
        _restore(sched, "step", prev_step)
        if stub:
            _restore(net, "forward", prev_forward)
    return rec


def _restore(obj: Any, name: str, prev: Any) -> None:
    if prev is None:
        obj.__dict__.pop(name, None)  # back to the class method
    else:
        obj.__dict__[name] = prev


__all__ = ["Forward", "Recording", "Step", "StopRecording", "denoiser_of", "record"]
