"""``teacher.kind: unet_eps`` -- a VP ``UNet2DModel`` folder (``unet/`` + ``scheduler/``, as
``DDPMPipeline.save_pretrained`` writes it) on an image data set's own pixels. A UNet with
``num_class_embeds = num_classes + 1`` uses the last label as the null class (CFG)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from fewstep.core.levels import resolve_teacher_sigmas
from fewstep.data.problem import Problem, get_problem
from fewstep.data.prompts import PROMPTS_DATA
from fewstep.data.spec import is_builtin
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
from fewstep.teachers.diffusers.vp import VPEpsilonDenoiser
from fewstep.teachers.safety import require_safetensors

if TYPE_CHECKING:
    from fewstep.teachers.spec import TeacherSpec


@TEACHER_KINDS.register("unet_eps")
class UNetEpsTeacher(TeacherAdapter):
    fields = ("pretrained",)

    def check(self, spec: TeacherSpec) -> None:
        super().check(spec)
        if spec.pretrained is None:
            raise ValueError("teacher.pretrained: required for teacher.kind unet_eps (a folder "
                             "with unet/ and scheduler/, or a hub id)")

    def check_data(self, spec: TeacherSpec, data: DataRef) -> None:
        if data == PROMPTS_DATA or (is_builtin(data) and get_problem(data).is_toy):
            raise ValueError(f"data: teacher.kind unet_eps needs an image data set (digits or "
                             f"your own images), got {data!r}")

    def load(self, spec: TeacherSpec, *, data: DataRef, cache_dir: str, device: torch.device
             ) -> LoadedTeacher:
        from diffusers import DDPMScheduler, UNet2DModel

        t = spec
        assert t.pretrained is not None
        require_safetensors(t.pretrained)
        try:
            unet = UNet2DModel.from_pretrained(t.pretrained, subfolder="unet",
                                               use_safetensors=True,
                                               **dtype_kwargs(torch_dtype(t.dtype)))
            sched = DDPMScheduler.from_pretrained(t.pretrained, subfolder="scheduler")
        except (OSError, ValueError) as e:
            raise ConfigError(f"teacher.pretrained: cannot load unet/ + scheduler/ from "
                              f"{t.pretrained}: {first_line(e)}") from None
        problem = get_problem(data)
        ucfg = unet.config
        shape = (int(ucfg.in_channels), int(ucfg.sample_size), int(ucfg.sample_size))
        if shape != tuple(problem.data_shape):
            raise ConfigError(f"teacher.pretrained: the UNet takes samples of shape {shape} but "
                              f"data {data!r} has shape {tuple(problem.data_shape)}")
        n_emb = ucfg.num_class_embeds
        null_class = None
        if n_emb is None or getattr(unet, "class_embedding", None) is None:
            problem = Problem(problem.name, problem.data_shape, 0)  # unconditional teacher
        elif n_emb < problem.num_classes:
            raise ConfigError(f"teacher.pretrained: the UNet has {n_emb} class embeddings but "
                              f"data {data!r} has {problem.num_classes} classes")
        elif n_emb > problem.num_classes:
            null_class = problem.num_classes
        den = VPEpsilonDenoiser.from_scheduler(unet, sched, null_class=null_class)
        den = den.to(device).eval().requires_grad_(False)
        sig, scale = resolve_teacher_sigmas(t.levels or "uniform", t.steps, t.shift or 1.0,
                                            sched)
        tcfg = {"kind": "unet_eps", "pretrained": t.pretrained, "dtype": t.dtype,
                "data": data, "null_class": null_class, "builder": list(den.builder_spec()),
                "sampling": sampling_config(t, sig, t.shift or 1.0, 1.0, scale)}
        return LoadedTeacher(den, tcfg, identity_of(tcfg, unet), problem, None)

    def meta(self, spec: TeacherSpec, *, data: DataRef) -> MetaTeacher:
        from diffusers import UNet2DModel

        t = spec
        try:
            ucfg = UNet2DModel.load_config(t.pretrained, subfolder="unet")
        except (OSError, ValueError) as e:
            raise ConfigError(f"teacher.pretrained: cannot read unet/config.json from "
                              f"{t.pretrained}: {first_line(e)}") from None
        with torch.device("meta"):
            unet = UNet2DModel.from_config(ucfg)
        den = VPEpsilonDenoiser(unet, torch.linspace(0.999, 0.001, 1000))  # placeholder levels
        prob = get_problem(data)
        return MetaTeacher(den, tuple(prob.data_shape), prob.num_classes, {"kind": "unet_eps"})
