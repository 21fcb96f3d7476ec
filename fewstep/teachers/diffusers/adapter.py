"""``teacher.kind: diffusers`` -- any text-to-image diffusers pipeline, read from the pipeline
itself (``zimage``: the same, restricted to a Z-Image pipeline).

:meth:`DiffusersTeacher.load` checks the folder (pipeline class, components) before the weights,
loads the pipeline (safetensors only), reads it (:func:`.pipeline_reading.read_pipeline`: one
recording of ``__call__`` at ``teacher.resolution`` and ``teacher.steps``), captures every
prompt's conditioning as ``__call__`` passes it (:class:`.conditioning_cache.ConditioningCache`,
under ``cache.dir``) and builds the :class:`~fewstep.teachers.base.LoadedTeacher`:

* ``denoiser``: :class:`.pipeline_denoiser.PipelineDenoiser`, ``D(x, s, cond) -> x0_hat``;
* ``sampler`` (``teacher.levels: pipeline``, the default): a copy of the pipeline's scheduler
  stepped with it (:func:`.scheduler_sample`), from the recorded initial noise scale;
  ``uniform`` / a list: fewstep's Euler sampler at those levels;
* ``sampling.cfg_scale``: ``teacher.cfg_scale`` (our ``w``) or the pipeline's own default
  guidance in ``w`` units;
* ``problem``: :class:`~fewstep.data.prompts.PromptProblem` of the recorded latent shape,
  decoding through the family's decoder or the generic one.

Every problem is one line naming ``teacher.pretrained`` (or ``teacher.call_kwargs``).
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import diffusers
import torch
from torch import Tensor, nn

from fewstep.core.levels import resolve_teacher_sigmas
from fewstep.data.prompts import PROMPTS_DATA, PromptProblem
from fewstep.errors import ConfigError
from fewstep.teachers.base import (
    TEACHER_KINDS,
    DataRef,
    LoadedTeacher,
    MetaTeacher,
    TeacherAdapter,
    dtype_kwargs,
    first_line,
    identity_of,
    sampling_config,
    torch_dtype,
)
from fewstep.teachers.diffusers import family_entries as _entries  # noqa: F401  (built-ins)
from fewstep.teachers.diffusers.conditioning_cache import ConditioningCache
from fewstep.teachers.diffusers.families import family_for
from fewstep.teachers.diffusers.meta import meta_denoiser
from fewstep.teachers.diffusers.pipeline_reading import PipelineReading, read_pipeline
from fewstep.teachers.diffusers.prompt_cache import read_prompt_file
from fewstep.teachers.diffusers.recorder import DENOISER_NAMES
from fewstep.teachers.diffusers.scheduler_sampler import scheduler_sample
from fewstep.teachers.diffusers.support import check_folder, refusal
from fewstep.teachers.safety import require_safetensors

if TYPE_CHECKING:
    from fewstep.teachers.spec import TeacherSpec

log = logging.getLogger(__name__)
#: components that stay on the device once the prompt cache is complete
_KEEP_ON_DEVICE = ("vae", "movq")


def check_prompt_file(path: str) -> None:
    if not Path(path).is_file():
        raise ConfigError(f"teacher.prompts: prompt file not found: {path}")
    if not read_prompt_file(path):
        raise ConfigError(f"teacher.prompts: {path} holds no prompts (one per line)")


def check_pipeline_source(pretrained: str, family_required: str | None = None,
                          field: str = "teacher.pretrained",
                          only: tuple[str, ...] | None = None) -> None:
    """Before any weights: a supported pipeline class with every component it lists (``only``:
    just these) in a local folder; :class:`ConfigError` naming ``field`` otherwise."""
    try:
        cls = check_folder(pretrained, only)
    except (ValueError, OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"{field}: {first_line(e)}") from None
    if cls is None:
        return
    reason = refusal(cls)
    if reason is not None:
        raise ConfigError(f"{field}: {reason}")
    if family_required and cls != family_required:
        raise ConfigError(f"teacher.kind: this kind needs a {family_required} but "
                          f"{pretrained} holds a {cls}; use teacher.kind diffusers")


def load_pipeline(pretrained: str, dtype: str, field: str = "teacher.pretrained") -> Any:
    """``DiffusionPipeline.from_pretrained`` from safetensors only (never remote code)."""
    require_safetensors(pretrained, field)
    try:
        pipe = diffusers.DiffusionPipeline.from_pretrained(
            pretrained, use_safetensors=True, **dtype_kwargs(torch_dtype(dtype)))
    except (OSError, ValueError, TypeError, AttributeError) as e:
        raise ConfigError(f"{field}: cannot load a diffusers pipeline (safetensors "
                          f"only) from {pretrained}: {first_line(e)}") from None
    pipe.set_progress_bar_config(disable=True)
    return pipe


def offload_text_encoders(pipe: Any, reading: PipelineReading) -> None:
    """Move every module but the denoiser and the decoder to the CPU (the prompt cache holds
    what they computed)."""
    keep = {reading.spec.denoiser, *_KEEP_ON_DEVICE}
    for name, m in pipe.components.items():
        if isinstance(m, nn.Module) and name not in keep:
            m.to("cpu")


@TEACHER_KINDS.register("diffusers")
class DiffusersTeacher(TeacherAdapter):
    """Any supported diffusers text-to-image pipeline (see module docstring)."""

    fields = ("pretrained", "prompts", "resolution", "call_kwargs")
    family_required: ClassVar[str | None] = None

    def check(self, spec: TeacherSpec) -> None:
        super().check(spec)
        for name, what in (("pretrained", "a diffusers pipeline folder or hub id"),
                           ("prompts", "a text file, one prompt per line"),
                           ("resolution", "image size in pixels, e.g. 1024")):
            if getattr(spec, name) is None:
                raise ValueError(f"teacher.{name}: required for teacher.kind {self.kind} "
                                 f"({what})")
        if spec.steps < 2:
            raise ValueError(f"teacher.steps: a pipeline teacher needs at least 2 steps "
                             f"(got {spec.steps})")

    def check_data(self, spec: TeacherSpec, data: DataRef) -> None:
        if data != PROMPTS_DATA:
            raise ValueError(f"data: must be {PROMPTS_DATA!r} for teacher.kind {self.kind} "
                             f"(latents + prompts from teacher.prompts), got {data!r}")

    def load(self, spec: TeacherSpec, *, data: DataRef, cache_dir: str, device: torch.device
             ) -> LoadedTeacher:
        assert spec.pretrained is not None and spec.prompts is not None
        check_prompt_file(spec.prompts)  # before the (slow) weights
        check_pipeline_source(spec.pretrained, self.family_required)
        return self.from_pipeline(load_pipeline(spec.pretrained, spec.dtype), spec,
                                  cache_dir=cache_dir, device=device)

    def from_pipeline(self, pipe: Any, spec: TeacherSpec, *, cache_dir: str,
                      device: torch.device | str) -> LoadedTeacher:
        """Read an already loaded pipeline (moved to ``device`` and frozen)."""
        t = spec
        assert t.prompts is not None and t.resolution is not None
        if self.family_required and type(pipe).__name__ != self.family_required:
            raise ConfigError(f"teacher.kind: {self.kind} needs a {self.family_required}, got "
                              f"{type(pipe).__name__}; use teacher.kind diffusers")
        device = torch.device(device)
        pipe = pipe.to(device)
        for m in pipe.components.values():
            if isinstance(m, nn.Module):
                m.eval().requires_grad_(False)
        kw = dict(t.call_kwargs)
        if t.max_sequence_length is not None:
            kw["max_sequence_length"] = t.max_sequence_length
        try:
            reading = read_pipeline(pipe, t.resolution, t.resolution, t.steps, kw)
        except ValueError as e:
            field = "teacher.call_kwargs" if "call argument" in str(e) or "takes no argument" \
                in str(e) else "teacher.pretrained"
            if "'max_sequence_length'" in str(e) and t.max_sequence_length is not None:
                field = "teacher.max_sequence_length"
            elif "divisible" in str(e):  # the pipeline's own size check (its check_inputs)
                field = "teacher.resolution"
            raise ConfigError(f"{field}: {first_line(e)}") from None
        check_prompt_file(t.prompts)
        prompt_bytes = Path(t.prompts).read_bytes()
        cache = ConditioningCache(cache_dir, pipe, reading.spec, reading.call_kwargs,
                                  read_prompt_file(t.prompts),
                                  hashlib.sha256(prompt_bytes).hexdigest())
        if device.type != "cpu":
            offload_text_encoders(pipe, reading)
        den = reading.denoiser(cache.null()).eval().requires_grad_(False)
        pr = reading.spec.probe
        levels = t.levels or "pipeline"
        sampler: Any = None
        w0 = reading.spec.guidance.w if reading.spec.guidance is not None else 1.0
        if levels == "pipeline":
            sig, scale = pr.distinct_levels(), reading.init_scale

            def own_sampler(x_t: Tensor, cond: Any, w: float) -> Any:
                return scheduler_sample(den, x_t, cond, w)
            sampler = own_sampler
        else:
            sc = pipe.scheduler.config  # the scheduler's static shift (not its dynamic mu)
            own_shift = 1.0 if sc.get("use_dynamic_shifting") else float(sc.get("shift") or 1.0)
            sig, scale = resolve_teacher_sigmas(levels, t.steps, t.shift or own_shift)
            sampler = None
        codec = reading.codec()

        def to_images(latents: Tensor) -> Tensor:
            return codec.decode(latents).float()

        problem = PromptProblem(reading.spec.latent_chw, cache, decode=to_images)
        tcfg = {"kind": self.kind, "pretrained": t.pretrained, "dtype": t.dtype,
                "resolution": t.resolution, "latent_shape": list(reading.spec.latent_chw),
                "max_sequence_length": t.max_sequence_length, "call_kwargs": t.call_kwargs,
                "pipeline_class": type(pipe).__name__, "component": reading.spec.denoiser,
                "family": type(reading.network).__name__,
                "input_layout": reading.input_layout, "loop_layout": reading.spec.loop_layout.name,
                "noise_dtype": str(reading.noise_dtype).removeprefix("torch."),
                "attributes": reading.attributes,
                "prediction_type": pr.prediction, "path": pr.path,
                "sampling": sampling_config(t, sig, t.shift or 1.0, w0, scale)}
        info = {**tcfg, "prompts_sha256": hashlib.sha256(prompt_bytes).hexdigest(),
                "conditioning": cache.key, "reading": reading.describe()}
        return LoadedTeacher(den, tcfg, identity_of(info, reading.network), problem, pipe,
                             codec, sampler)

    def meta(self, spec: TeacherSpec, *, data: DataRef) -> MetaTeacher:
        assert spec.pretrained is not None and spec.resolution is not None
        check_pipeline_source(spec.pretrained, self.family_required,  # configs: no tokenizer
                              only=(*DENOISER_NAMES, "vae", "movq"))
        try:
            den, shape, cls = meta_denoiser(spec.pretrained, spec.resolution, family_for)
        except (OSError, ValueError, KeyError) as e:
            raise ConfigError(f"teacher.pretrained: cannot read the pipeline's configs from "
                              f"{spec.pretrained}: {first_line(e)}") from None
        return MetaTeacher(den, shape, 0, {"kind": self.kind, "pretrained": spec.pretrained,
                                           "family": cls})


@TEACHER_KINDS.register("zimage")
class ZImageTeacher(DiffusersTeacher):
    """``teacher.kind: zimage``: the ``diffusers`` adapter restricted to a ``ZImagePipeline``."""

    family_required = "ZImagePipeline"


__all__ = ["DiffusersTeacher", "ZImageTeacher", "check_pipeline_source", "check_prompt_file",
           "load_pipeline", "offload_text_encoders"]
