"""Sample an exported student with fewstep (``fewstep sample --student FOLDER``).

:class:`StudentPipeline` reads every export fewstep writes: fewstep's own format
(``student_index.json``, :mod:`fewstep.export.native`) and the diffusers format
(``fewstep_student.json``, :mod:`fewstep.export.diffusers_export`) of both families:

* ``pipeline``: the exported pipeline (or the LoRA base it references) is read like a teacher
  (:func:`~fewstep.teachers.diffusers.pipeline_reading.read_pipeline`, the call arguments the
  teacher was read with), each step's network wrapped as a
  :class:`~fewstep.teachers.diffusers.pipeline_denoiser.PipelineDenoiser`, the prompts'
  conditioning captured from ``__call__`` as in training; sampling is fewstep's K-step sampler
  (:func:`fewstep.core.samplers.sample`) with the noise drawn as the pipeline draws it -- the
  first noise in its ``latents`` layout, one fresh noise per transition in its loop layout -- so
  it equals the model card's code from the same seed;
* ``unet_eps``: the UNet steps around :class:`~fewstep.teachers.diffusers.vp.VPEpsilonDenoiser`.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, TypeVar

import torch
from diffusers.models.modeling_utils import ModelMixin
from diffusers.pipelines.pipeline_utils import DiffusionPipeline
from safetensors.torch import load_file
from torch import Tensor, nn

from fewstep.core.samplers import sample
from fewstep.export.diffusers_export import INFO, PIPELINE, network_attribute, read_info
from fewstep.export.native import INDEX, ExportedStudent, read_student_folder
from fewstep.export.pipeline_info import teacher_call
from fewstep.teachers.base import dtype_kwargs
from fewstep.teachers.diffusers.capture import capture_cond
from fewstep.teachers.diffusers.cond_batch import CondBatch
from fewstep.teachers.diffusers.layouts import LAYOUTS
from fewstep.teachers.diffusers.pipeline_denoiser import PipelineDenoiser
from fewstep.teachers.diffusers.pipeline_reading import PipelineReading, read_pipeline

_T = TypeVar("_T")


def _torch_dtype(name: str) -> torch.dtype:
    dt = getattr(torch, name, None)
    if not isinstance(dt, torch.dtype):
        raise ValueError(f"unknown dtype {name!r}")
    return dt


def _scheduler_alphas(src: str) -> Tensor:
    """``alphas_cumprod`` of the scheduler saved under ``src/scheduler``."""
    import diffusers

    cfg = diffusers.DDPMScheduler.load_config(src, subfolder="scheduler")  # any class's config
    cls = getattr(diffusers, str(cfg.get("_class_name", "DDPMScheduler")), None)
    if not (isinstance(cls, type) and issubclass(cls, diffusers.SchedulerMixin)):
        raise ValueError(f"{src}/scheduler: unknown scheduler class {cfg.get('_class_name')!r}")
    alphas = getattr(cls.from_config(cfg), "alphas_cumprod", None)
    if alphas is None:
        raise ValueError(f"{src}/scheduler: {cls.__name__} has no alphas_cumprod (not VP)")
    return alphas


def _diffusers_class(name: str, base: type[_T]) -> type[_T]:
    import diffusers

    cls = getattr(diffusers, name, None)
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise ValueError(f"{INFO}: unknown {base.__name__} class {name!r}")
    return cls


def load_diffusers_student(folder: str | os.PathLike[str], device: torch.device | str = "cpu",
                           dtype: torch.dtype | None = None
                           ) -> tuple[ExportedStudent, PipelineReading | None]:
    """Rebuild the student of a diffusers-format export (eval mode); family ``pipeline`` also
    returns the reading of its pipeline. ``dtype`` casts the networks (default: as saved)."""
    from fewstep.student.lora import PerStepLoRA
    from fewstep.teachers.diffusers.vp import VPEpsilonDenoiser

    root = Path(folder)
    info = read_info(root)
    comp = info["component"]
    src = str(root) if info["base"]["copied"] else str(info["base"]["source"])
    den_dtype = _torch_dtype(info["dtypes"]["denoiser"])
    reading = None
    if info["family"] == PIPELINE:
        model_cls = _diffusers_class(info["network_class"], ModelMixin)
    else:
        model_cls = _diffusers_class("UNet2DModel", ModelMixin)

    def load(where: str, sub: str) -> nn.Module:
        return model_cls.from_pretrained(where, subfolder=sub, use_safetensors=True,
                                         **dtype_kwargs(den_dtype))

    first = load(src if info["parameterization"] == "lora" else str(root),
                 comp if info["parameterization"] == "lora" else info["step_subfolders"][0])
    if info["family"] == PIPELINE:
        reading = _read_pipeline(info, src, first, device)

    def wrap(model: nn.Module) -> nn.Module:
        if reading is not None:
            return PipelineDenoiser(model, reading.spec, None, reading.family.feature_blocks,
                                    reading.family.lora_targets)
        u = info["unet"]
        return VPEpsilonDenoiser(model, _scheduler_alphas(src), u["prediction_type"],
                                 u["null_class"], u["min_one_minus_sigma"])

    sigmas = torch.tensor(info["sigmas"], dtype=torch.float32)
    index = {"format": info["format"], "extra": info}
    if info["parameterization"] == "lora":
        cfg = info["lora"]
        base = wrap(first)
        attr = network_attribute(base)
        lora = PerStepLoRA(base, info["num_steps"], rank=cfg["rank"], alpha=cfg["alpha"],
                           target_modules=[f"re:{re.escape(attr + '.' + t)}"
                                           for t in cfg["targets"]])
        for k, name in enumerate(cfg["files"]):
            sd = load_file(str(root / name))
            for p in lora.step_parameters(k):  # the adapters' saved (training) dtype
                p.data = p.data.to(next(iter(sd.values())).dtype)
            lora.load_adapter_state_dict(k, {attr + n.removeprefix(comp): t
                                             for n, t in sd.items()})
        lora.to(device=device, dtype=dtype).eval()
        return ExportedStudent(sigmas=sigmas, lora=lora, index=index), reading
    nets: dict[str, nn.Module] = {info["step_subfolders"][0]: first}
    for sub in info["step_subfolders"]:
        if sub not in nets:
            nets[sub] = load(str(root), sub)
    dens = {sub: wrap(m).to(device=device, dtype=dtype).eval() for sub, m in nets.items()}
    return ExportedStudent(sigmas=sigmas, steps=[dens[s] for s in info["step_subfolders"]],
                           index=index), reading


def _read_pipeline(info: dict[str, Any], src: str, network: nn.Module,
                   device: torch.device | str) -> PipelineReading:
    """The export's pipeline class from ``src`` holding ``network``, read as the teacher was."""
    cls = _diffusers_class(str(info["pipeline_class"]), DiffusionPipeline)
    pipe = cls.from_pretrained(src, use_safetensors=True, **{info["component"]: network},
                               **dtype_kwargs(_torch_dtype(info["dtypes"]["pipeline"])))
    pipe.set_progress_bar_config(disable=True)
    pipe = pipe.to(device)
    for m in pipe.components.values():
        if isinstance(m, nn.Module):
            m.eval().requires_grad_(False)
    return read_pipeline(pipe, info["height"], info["width"], 2, teacher_call(info["teacher"]))


class StudentPipeline:
    """Sample an exported student (see module docstring). Build with :meth:`from_pretrained`.

    Attributes: ``student`` (the reloaded steps), ``extra`` (the export's settings),
    ``reading`` (family ``pipeline``: its pipeline, read).
    """

    def __init__(self, student: ExportedStudent, reading: PipelineReading | None = None,
                 device: torch.device | str = "cpu") -> None:
        self.student, self.reading = student, reading
        self.extra: dict[str, Any] = student.index.get("extra", {})
        self.device = torch.device(device)

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike[str], device: torch.device | str = "cpu",
                        dtype: torch.dtype | None = None) -> StudentPipeline:
        """Load the student (and its pipeline) on ``device``; ``dtype`` casts the student."""
        root = Path(folder)
        if (root / INFO).is_file():
            st, reading = load_diffusers_student(root, device=device, dtype=dtype)
            return cls(st, reading, device)
        if not (root / INDEX).is_file():
            raise FileNotFoundError(f"{root} is not an exported student ({INFO} / {INDEX} "
                                    "missing)")
        return cls(read_student_folder(root, device=device, dtype=dtype), None, device)

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> CondBatch:
        """Each prompt's conditioning as ``__call__`` passes it (captured per prompt)."""
        if self.reading is None:
            raise ValueError("this student takes no prompts (it is not a text-to-image student)")
        r = self.reading
        return CondBatch.cat([capture_cond(r.pipe, r.spec.like(), r.call_kwargs, [p])[0]
                              for p in prompts])

    def default_cond(self, n: int) -> Tensor | None:
        """Labels ``i % num_classes`` for class-conditional students, else ``None``."""
        c = int(self.extra.get("num_classes", 0))
        return (torch.arange(n) % c).to(self.device) if c > 0 else None

    def _noises(self, n: int, g: torch.Generator) -> tuple[Tensor, list[Tensor]]:
        """The first noise and one per transition, drawn as the pipeline draws them."""
        shape = (n, *self.extra["latent_shape"])
        k = self.student.num_steps
        if self.reading is None:
            return torch.randn(shape, generator=g), [torch.randn(shape, generator=g)
                                                     for _ in range(k - 1)]
        noise = self.extra["noise"]
        zeros = torch.zeros(shape)
        first = LAYOUTS.get(noise["input_layout"] or "bchw")
        loop = LAYOUTS.get(noise["loop_layout"])
        asp = self.reading.spec.aspect
        x = first.to_bchw(torch.randn(tuple(first.to_native(zeros).shape), generator=g,
                                      dtype=_torch_dtype(noise["dtype"])), asp)
        eps = [loop.to_bchw(torch.randn(tuple(loop.to_native(zeros).shape), generator=g), asp)
               for _ in range(k - 1)]
        return x.float(), eps

    @torch.no_grad()
    def generate_latents(self, cond: Any, n: int, seed: int = 0) -> Tensor:
        """The student's K-step output ``(n, *latent_shape)`` for conditioning ``cond``."""
        x, eps = self._noises(n, torch.Generator().manual_seed(seed))
        return sample(self.student.step_fn(), x.to(self.device), cond, self.student.sigmas,
                      self.extra.get("transition", "fresh"),
                      step_noises=[e.to(self.device) for e in eps]).sample

    @torch.no_grad()
    def decode(self, latents: Tensor) -> Tensor:
        """Latents -> images ``(B, 3, H, W)`` in about ``[-1, 1]`` (identity in pixel space)."""
        if self.reading is None:
            return latents
        return self.reading.codec().decode(latents).float()

    @torch.no_grad()
    def __call__(self, prompt: str | list[str] | None = None, num_images_per_prompt: int = 1,
                 num_images: int | None = None, seed: int = 0) -> Tensor:
        """Images ``(B, C, H, W)`` in about ``[-1, 1]``: ``num_images_per_prompt`` per prompt
        (row order ``p0, p0, ..., p1, ...``), or ``num_images`` with default labels."""
        if prompt is not None:
            prompts = [prompt] if isinstance(prompt, str) else list(prompt)
            cond: CondBatch | Tensor | None = self.encode_prompts(prompts).repeat_interleave(
                num_images_per_prompt)
            n = len(prompts) * num_images_per_prompt
        else:
            if self.reading is not None:
                raise ValueError("a text-to-image student needs a prompt")
            n = num_images or num_images_per_prompt
            cond = self.default_cond(n)
        return self.decode(self.generate_latents(cond, n, seed))


__all__ = ["StudentPipeline", "load_diffusers_student"]
