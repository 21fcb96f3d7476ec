"""Read a diffusers pipeline: one recording of its own ``__call__`` -> everything fewstep needs.

:func:`read_pipeline` refuses an unsupported pipeline class (:func:`.support.refusal`), applies
the family entry (:mod:`.families`: its ``attributes``), records ``__call__`` once (prompt
:data:`PROBE_PROMPTS` ``[0]``, 3 real steps at the teacher's resolution and step count, seeded
generator; stubbed calls for the rest) and infers the call (:func:`.call_spec.infer`) and how
``__call__`` draws its initial noise (:func:`.call_spec.noise_draw`). Every failure is a
``ValueError`` with one line saying what could not be read.

``attributes``: the instance attributes the family entry set (see
:class:`~fewstep.teachers.diffusers.families.Family`).
"""

from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from fewstep.teachers.diffusers.call_spec import CallSpec, infer, noise_draw
from fewstep.teachers.diffusers.call_tree import batch_of, get
from fewstep.teachers.diffusers.capture import stub_record
from fewstep.teachers.diffusers.codec import LatentCodec
from fewstep.teachers.diffusers.cond_batch import CondBatch
from fewstep.teachers.diffusers.families import Family, family_for
from fewstep.teachers.diffusers.pipeline_denoiser import PipelineDenoiser
from fewstep.teachers.diffusers.recorder import denoiser_of, record
from fewstep.teachers.diffusers.support import refusal

log = logging.getLogger(__name__)

#: the prompts of the recordings (two, to tell conditioning from constant arguments)
PROBE_PROMPTS = ("a photo of a cat", "red car")
#: arguments fewstep sets itself (not allowed in ``teacher.call_kwargs``)
OWN_ARGUMENTS = ("prompt", "latents", "generator", "output_type", "return_dict", "height",
                 "width", "num_inference_steps", "callback_on_step_end")


@dataclass
class PipelineReading:
    """What was read: the entry, the inferred call, the ``__call__`` kwargs fewstep uses (no
    prompt), and how ``__call__`` draws its first noise (``input_layout``, ``init_scale``,
    ``noise_dtype``)."""

    pipe: Any
    family: Family
    family_keys: list[str]
    spec: CallSpec
    call_kwargs: dict[str, Any]
    input_layout: str | None
    init_scale: float
    noise_dtype: torch.dtype = torch.float32
    attributes: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def network(self) -> nn.Module:
        return self.pipe.components[self.spec.denoiser]

    def denoiser(self, null: CondBatch | None) -> PipelineDenoiser:
        """The pipeline's network as a fewstep denoiser (``null``: the captured null branch)."""
        return PipelineDenoiser(self.network, self.spec, null, self.family.feature_blocks,
                                self.family.lora_targets)

    def codec(self) -> LatentCodec:
        return LatentCodec(self.pipe, self.family.decode)

    def describe(self) -> dict[str, Any]:
        """JSON-able summary (``fewstep teacher check``, the teacher config)."""
        return {"pipeline": type(self.pipe).__name__,
                "denoiser": type(self.network).__name__,
                "family_entries": self.family_keys or ["none (all read from the pipeline)"],
                **self.spec.describe(), "input_layout": self.input_layout,
                "init_scale": self.init_scale, "notes": self.spec.notes + self.notes}


def check_call_kwargs(pipe: Any, call_kwargs: dict[str, Any]) -> None:
    """``ValueError`` naming an argument ``__call__`` does not take or that fewstep sets."""
    params = inspect.signature(type(pipe).__call__).parameters
    for k in call_kwargs:
        if k in OWN_ARGUMENTS:
            raise ValueError(f"call argument {k!r} is set by fewstep")
        if k not in params:
            raise ValueError(f"{type(pipe).__name__}.__call__ takes no argument {k!r}")


def read_pipeline(pipe: Any, height: int | None, width: int | None, steps: int,
                  call_kwargs: dict[str, Any] | None = None, seed: int = 0) -> PipelineReading:
    """Record and infer (see module docstring); ``height`` / ``width`` ``None``: the pipeline's
    defaults. The pipeline is used where it is (device, dtype)."""
    reason = refusal(type(pipe).__name__)
    if reason is not None:
        raise ValueError(reason)
    fam, _ = family_for(type(pipe).__name__, None)
    _, net = denoiser_of(pipe, fam.denoiser)
    fam, keys = family_for(type(pipe).__name__, type(net).__name__)
    kw = dict(call_kwargs or {})
    check_call_kwargs(pipe, kw)
    if fam.decode is None and not isinstance(getattr(pipe, "vae", None), nn.Module):
        raise ValueError(f"{type(pipe).__name__} has no vae and its family entry no decode: "
                         "fewstep trains in a latent space it can decode")
    attributes = fam.attributes(pipe, height, width) if fam.attributes and height and width \
        else {}
    for k, v in attributes.items():
        setattr(pipe, k, v)
    base = {**kw, "num_inference_steps": steps, "output_type": "latent"}
    if height and width:
        base.update(height=height, width=width)
    rec = record(pipe, {**base, "prompt": PROBE_PROMPTS[0],
                        "generator": torch.Generator().manual_seed(seed)},
                 stop=f"step:{min(3, steps)}", denoiser=fam.denoiser)
    if not rec.steps:
        raise ValueError(f"{type(pipe).__name__}.__call__ made no scheduler step")
    spec = infer(pipe, rec, base, fam, PROBE_PROMPTS)
    layout, scale = noise_draw(rec, spec, seed)
    notes = [] if layout else [f"the first noise draw is not in a registered layout; "
                               f"init_noise_sigma {scale:g} is used"]
    clipping = _x0_clipping(pipe.scheduler)
    if clipping:
        log.warning(clipping)
        notes.append(clipping)
    return PipelineReading(pipe, fam, keys, spec, base, layout, scale,
                           rec.steps[0].sample.dtype, attributes, notes)


def _x0_clipping(scheduler: Any) -> str | None:
    """One line when ``scheduler`` clips or thresholds x0 at each step (a silent difference:
    the teacher's sampler steps the scheduler, so it clips; ``D(x, s)`` does not)."""
    cfg = getattr(scheduler, "config", {})
    on = [f"{k}=True" for k in ("clip_sample", "thresholding") if cfg.get(k)]
    if not on:
        return None
    return (f"{type(scheduler).__name__} has {' and '.join(on)}: the teacher's sampler clips x0 "
            "at every step as __call__ does, but D(x, s) -- the recipes' targets -- does not")


def single_call_kwargs(pipe: Any, spec: CallSpec, call_kwargs: dict[str, Any]
                       ) -> dict[str, Any]:
    """``__call__`` kwargs (beyond ``call_kwargs``, as the pipeline was read) under which it
    calls its denoiser once per step on the conditional branch alone (guidance off; an
    embedded guidance value is kept): ``{}`` when that is the default, else the first of
    ``guidance_scale`` 1 or 0 and ``true_cfg_scale`` 1 that does it (checked by a stubbed
    call). ``ValueError`` if none does."""
    params = inspect.signature(type(pipe).__call__).parameters
    tries: list[dict[str, Any]] = [{}]
    for name, value in (("guidance_scale", 1.0), ("guidance_scale", 0.0), ("true_cfg_scale", 1.0)):
        if name in params and not (name == "guidance_scale" and spec.guidance_leaf):
            tries.append({name: value})
    for extra in tries:
        rec = stub_record(pipe, spec.like(), {**call_kwargs, **extra}, ["a"])
        fw = rec.forwards_of_step(0)
        if len(fw) == 1 and batch_of(get(fw[0].args, fw[0].kwargs, spec.latent)) == 1:
            return extra
    raise ValueError(f"cannot switch {type(pipe).__name__}'s guidance off (tried "
                     f"{', '.join(map(str, tries[1:]))})")


__all__ = ["OWN_ARGUMENTS", "PROBE_PROMPTS", "PipelineReading", "check_call_kwargs",
           "read_pipeline", "single_call_kwargs"]
