"""An exported K-step student as a self-describing folder, and the pipeline that samples it.

Folder written by :func:`export_student` (the student part is :mod:`fewstep.diffusers_adapters.
export`'s format; ``extra`` in ``student_index.json`` records how to sample it)::

    student_index.json     format, mode (full | lora), sigmas, builder, lora, extra:
                           {"pipeline": "zimage" | "unet_eps" | "file", "transition",
                            "teacher": {...}, "components": "copy" | "reference" | "none",
                            "latent_shape", "num_classes", "max_sequence_length"}
    step0/ step1/ ...      (full: one network per step) | base/ + step*/adapter (lora)
    vae/ text_encoder/ tokenizer/ scheduler/      (Z-Image, components = copy)

With ``components = reference`` the Z-Image components are not copied; they are loaded from
the teacher's ``pretrained`` folder / hub id recorded in ``extra.teacher`` (smaller export; the
teacher must stay available). ``unet_eps`` and ``file`` students work in pixel space and need
no components.

:class:`StudentPipeline` rebuilds it and generates: noise ``(B, *latent_shape)`` from
``torch.Generator().manual_seed(seed)`` on the CPU, the K-step student sampler
(:func:`fewstep.samplers.sample`, fresh step noise from the same generator), and for Z-Image
the VAE decode. From the same noise and conditioning it reproduces the in-memory
:meth:`fewstep.distill.student.Student.generate` exactly.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from fewstep.diffusers_adapters.export import INDEX, LoadedStudent, load_student, save_student
from fewstep.samplers import sample

Components = Literal["copy", "reference"]
ZIMAGE_COMPONENTS = ("vae", "text_encoder", "tokenizer", "scheduler")


def export_student(student: Any, folder: str | os.PathLike[str], teacher_config: dict[str, Any],
                   pipeline: Any = None, components: Components = "copy",
                   num_classes: int = 0, latent_shape: tuple[int, ...] | None = None,
                   extra: dict[str, Any] | None = None) -> Path:
    """Write a :class:`~fewstep.distill.student.Student` (all K steps) as a folder.

    Args:
        student: the (EMA) student; ``lora`` parameterisation exports base + adapters, the
            others one network per step (``shared`` repeats its one network K times).
        teacher_config: the trainer's teacher config (``kind``, ``builder``, ...).
        pipeline: the teacher's diffusers pipeline (Z-Image: its VAE, text encoder, tokenizer
            and scheduler are saved when ``components = copy``).
        num_classes / latent_shape: what the sampler draws (labels ``i % C``; noise shape).
    """
    kind = teacher_config.get("kind", "file")
    if "builder" in teacher_config:
        target, kwargs = teacher_config["builder"]
        builder = (str(target), dict(kwargs))
    else:
        builder = ("fewstep.teacher:denoiser_from_config", {"config": teacher_config})
    k = student.num_steps
    steps = student.lora if student.lora is not None else \
        [student.step_denoiser(i) for i in range(k)]
    shape = list(latent_shape if latent_shape is not None
                 else teacher_config.get("latent_shape", []))
    info = {"pipeline": kind, "transition": student.transition,
            "teacher": {key: v for key, v in teacher_config.items() if key != "builder"},
            "components": "none", "latent_shape": shape, "num_classes": int(num_classes),
            "max_sequence_length": teacher_config.get("max_sequence_length"), **(extra or {})}
    out = Path(folder)
    if kind == "zimage":
        if components not in ("copy", "reference"):
            raise ValueError(f"components must be copy|reference, got {components!r}")
        if components == "copy":
            if pipeline is None:
                raise ValueError("components=copy needs the teacher pipeline")
            out.mkdir(parents=True, exist_ok=True)
            for name in ZIMAGE_COMPONENTS:
                getattr(pipeline, name).save_pretrained(out / name)
        info["components"] = components
    return save_student(out, steps, student.sigmas.detach().cpu(), builder, extra=info)


class StudentPipeline:
    """Sample an exported student (see module docstring). Build with :meth:`from_pretrained`.

    Attributes:
        student: the reloaded steps; ``index``: ``student_index.json``; ``vae`` /
            ``text_pipe``: Z-Image decoder and prompt encoder (``None`` in pixel space).
    """

    def __init__(self, student: LoadedStudent, vae: nn.Module | None = None,
                 text_pipe: Any = None, device: torch.device | str = "cpu") -> None:
        self.student = student
        self.index = student.index
        self.extra: dict[str, Any] = self.index.get("extra", {})
        self.vae = vae
        self.text_pipe = text_pipe
        self.device = torch.device(device)

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike[str], device: torch.device | str = "cpu",
                        dtype: torch.dtype | None = None) -> StudentPipeline:
        """Load the student (and, for Z-Image, VAE + text encoder + tokenizer) on ``device``.
        ``dtype`` casts the student (default: as saved)."""
        root = Path(folder)
        if not (root / INDEX).is_file():
            raise FileNotFoundError(f"{root} is not an exported student ({INDEX} missing)")
        st = load_student(root, device=device, dtype=dtype)
        extra = st.index.get("extra", {})
        vae = text_pipe = None
        if extra.get("pipeline") == "zimage":
            from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, ZImagePipeline
            from transformers import AutoModel, AutoTokenizer

            copied = extra.get("components") == "copy"
            src = str(root) if copied else extra["teacher"]["pretrained"]
            kw: dict[str, Any] = {}
            tkw: dict[str, Any] = {}
            tdtype = extra.get("teacher", {}).get("dtype")
            if tdtype and not copied:  # copies keep the dtype they were saved in
                from fewstep.distill.teachers import _dtype_kwargs, torch_dtype

                kw = _dtype_kwargs(torch_dtype(tdtype))
                tkw = {"dtype": torch_dtype(tdtype)}
            vae = AutoencoderKL.from_pretrained(src, subfolder="vae", **kw).to(device)
            text_encoder = AutoModel.from_pretrained(src, subfolder="text_encoder",
                                                     trust_remote_code=False, **tkw).to(device)
            tokenizer = AutoTokenizer.from_pretrained(src, subfolder="tokenizer",
                                                      trust_remote_code=False)
            sched = FlowMatchEulerDiscreteScheduler.from_pretrained(src, subfolder="scheduler")
            text_pipe = ZImagePipeline(scheduler=sched, vae=vae, text_encoder=text_encoder.eval(),
                                       tokenizer=tokenizer, transformer=None)
            vae.eval().requires_grad_(False)
            text_encoder.requires_grad_(False)
        return cls(st, vae, text_pipe, device)

    # -- conditioning --------------------------------------------------------------------------
    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> Any:
        """Prompts -> :class:`~fewstep.diffusers_adapters.zimage.PromptEmbeds` (one row each)."""
        from fewstep.diffusers_adapters.prompts import pipeline_encode_fn
        from fewstep.diffusers_adapters.zimage import PromptEmbeds

        if self.text_pipe is None:
            raise ValueError("this student takes no prompts (it is not a text-to-image student)")
        enc = pipeline_encode_fn(self.text_pipe, self.extra.get("max_sequence_length"),
                                 self.device)
        return PromptEmbeds.from_list(enc(list(prompts)))

    def default_cond(self, n: int) -> Tensor | None:
        """Labels ``i % num_classes`` for class-conditional students, else ``None``."""
        c = int(self.extra.get("num_classes", 0))
        return (torch.arange(n) % c).to(self.device) if c > 0 else None

    # -- sampling ------------------------------------------------------------------------------
    @torch.no_grad()
    def generate_latents(self, cond: Any, n: int, seed: int = 0) -> Tensor:
        """The student's K-step output ``(n, *latent_shape)`` for conditioning ``cond``."""
        g = torch.Generator().manual_seed(seed)
        shape = tuple(self.extra["latent_shape"])
        noise = torch.randn((n, *shape), generator=g).to(self.device)
        return sample(self.student.step_fn(), noise, cond, self.student.sigmas,
                      self.extra.get("transition", "fresh"), generator=g).sample

    @torch.no_grad()
    def decode(self, latents: Tensor) -> Tensor:
        """Latents -> images ``(B, 3, H, W)`` in about ``[-1, 1]`` (identity in pixel space)."""
        if self.vae is None:
            return latents
        from fewstep.diffusers_adapters.latents import decode

        return decode(self.vae, latents).float()

    @torch.no_grad()
    def __call__(self, prompt: str | list[str] | None = None, num_images_per_prompt: int = 1,
                 num_images: int | None = None, seed: int = 0) -> Tensor:
        """Images ``(B, C, H, W)`` in about ``[-1, 1]``: ``num_images_per_prompt`` per prompt
        (row order ``p0, p0, ..., p1, ...``), or ``num_images`` with default labels."""
        if prompt is not None:
            prompts = [prompt] if isinstance(prompt, str) else list(prompt)
            cond = self.encode_prompts(prompts).repeat_interleave(num_images_per_prompt)
            n = len(prompts) * num_images_per_prompt
        else:
            if self.text_pipe is not None:
                raise ValueError("a text-to-image student needs a prompt")
            n = num_images or num_images_per_prompt
            cond = self.default_cond(n)
        return self.decode(self.generate_latents(cond, n, seed))


__all__ = ["ZIMAGE_COMPONENTS", "StudentPipeline", "export_student"]
