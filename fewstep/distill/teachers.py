"""Diffusers teachers for the trainer (``teacher.kind: zimage | unet_eps``).

:func:`load_diffusers_teacher` turns a validated :class:`~fewstep.distill.config.DistillConfig`
into a :class:`LoadedTeacher`: the frozen denoiser (eval, ``requires_grad=False``, in
``teacher.dtype`` on the training device), the *problem* the trainer draws from, the teacher's
config (its ``sampling`` defaults and a ``builder`` that rebuilds the architecture for export)
and an identity string (teacher-cache fingerprint, resume check).

* ``zimage``: ``ZImagePipeline.from_pretrained(teacher.pretrained)``; the problem is a
  :class:`~fewstep.data.prompts.PromptProblem` over ``teacher.prompts`` whose latent shape is
  ``(latent_channels, resolution / f, resolution / f)`` with ``f`` the VAE factor; prompt
  embeddings are cached under ``cache.dir/prompt_embeds/<key>`` (computed once, reused by every
  run with the same encoder and prompt file), after which the text encoder moves to the CPU.
  Default shift: the pipeline scheduler's ``shift``; default CFG: none (``w = 1``).
* ``unet_eps``: a folder with ``unet/`` (``UNet2DModel``) and ``scheduler/`` (DDPM-style
  ``alphas_cumprod``) as written by ``DDPMPipeline.save_pretrained``; it works on the data
  set's own pixels (``data: digits``), so its ``in_channels`` / ``sample_size`` must match. A
  class-conditional UNet with ``num_class_embeds = num_classes + 1`` uses the last label as
  the null class (CFG); an unconditional UNet makes the problem unconditional.

Every failure is a one-line :class:`~fewstep.errors.ConfigError` naming the ``teacher.*`` field.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from fewstep.data.problem import Problem, get_problem
from fewstep.data.prompts import PromptProblem
from fewstep.denoiser import Denoiser
from fewstep.distill.config import DistillConfig
from fewstep.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass
class LoadedTeacher:
    """A frozen diffusers teacher and what the trainer needs around it."""

    denoiser: Denoiser
    config: dict[str, Any]
    identity: str
    problem: Problem | PromptProblem
    pipeline: Any = None


def torch_dtype(name: str) -> torch.dtype:
    """``"bfloat16"`` -> ``torch.bfloat16`` (float32 | bfloat16 | float16)."""
    return {"float32": torch.float32, "bfloat16": torch.bfloat16,
            "float16": torch.float16}[name]


def weights_probe(module: nn.Module, h: Any, n: int = 4) -> None:
    """Feed names and the first 1024 values of the first / last ``n`` parameters into ``h``."""
    named = list(module.named_parameters())
    for name, p in named[:n] + named[-n:]:
        h.update(name.encode())
        h.update(p.detach().flatten()[:1024].to("cpu", torch.float64).numpy().tobytes())


def _identity(info: dict[str, Any], module: nn.Module) -> str:
    h = hashlib.sha256(json.dumps(info, sort_keys=True, default=str).encode())
    weights_probe(module, h)
    return h.hexdigest()


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def _dtype_kwargs(dtype: torch.dtype) -> dict[str, Any]:
    from fewstep.diffusers_adapters.zimage import _diffusers_has_dtype_kwarg

    return {"dtype" if _diffusers_has_dtype_kwarg() else "torch_dtype": dtype}


def load_diffusers_teacher(cfg: DistillConfig, device: torch.device) -> LoadedTeacher:
    """Dispatch on ``teacher.kind`` (``zimage`` or ``unet_eps``)."""
    if cfg.teacher.kind == "zimage":
        return load_zimage(cfg, device)
    if cfg.teacher.kind == "unet_eps":
        return load_unet_eps(cfg, device)
    raise ValueError(f"not a diffusers teacher kind: {cfg.teacher.kind!r}")


# ------------------------------------------------------------------------------------- Z-Image
def zimage_latent_shape(pretrained: str, resolution: int) -> tuple[int, int, int]:
    """Latent shape for ``resolution`` pixels, from the folder's VAE / transformer configs
    (read before any weights). ``ConfigError`` if not divisible by VAE factor x patch size."""
    from diffusers import AutoencoderKL, ZImageTransformer2DModel

    try:
        vae_cfg = AutoencoderKL.load_config(pretrained, subfolder="vae")
        tr_cfg = ZImageTransformer2DModel.load_config(pretrained, subfolder="transformer")
    except (OSError, ValueError, KeyError) as e:
        raise ConfigError(f"teacher.pretrained: cannot read a Z-Image pipeline (vae/, "
                          f"transformer/) from {pretrained}: {_first_line(e)}") from None
    f = 2 ** (len(vae_cfg["block_out_channels"]) - 1)
    p = int(next(iter(tr_cfg.get("all_patch_size", [2]))))
    if resolution % (f * p) != 0:
        raise ConfigError(f"teacher.resolution: {resolution} is not divisible by {f * p} (VAE "
                          f"factor {f} x patch size {p})")
    return int(vae_cfg["latent_channels"]), resolution // f, resolution // f


def prompt_cache_for(pipe: Any, prompt_file: str, cache_root: str | Path,
                     max_sequence_length: int, device: torch.device) -> Any:
    """The :class:`PromptCache` of ``prompt_file`` under ``cache_root/prompt_embeds/<key>``,
    ``key`` = hash of the encoder fingerprint and the prompt file's content."""
    from fewstep.diffusers_adapters.prompts import (
        PromptCache,
        encoder_fingerprint,
        pipeline_encode_fn,
        read_prompt_file,
    )

    path = Path(prompt_file)
    if not path.is_file():
        raise ConfigError(f"teacher.prompts: prompt file not found: {path}")
    if not read_prompt_file(path):
        raise ConfigError(f"teacher.prompts: {path} holds no prompts (one per line)")
    fp = encoder_fingerprint(pipe, max_sequence_length)
    key = hashlib.sha256((fp + hashlib.sha256(path.read_bytes()).hexdigest()).encode())
    folder = Path(cache_root).expanduser() / "prompt_embeds" / key.hexdigest()[:16]
    return PromptCache(folder, path, pipeline_encode_fn(pipe, max_sequence_length, device), fp)


def load_zimage(cfg: DistillConfig, device: torch.device) -> LoadedTeacher:
    """Z-Image pipeline -> frozen :class:`ZImageDenoiser` + :class:`PromptProblem`."""
    from fewstep.diffusers_adapters.latents import decode
    from fewstep.diffusers_adapters.prompts import pipeline_encode_fn
    from fewstep.diffusers_adapters.zimage import ZImageDenoiser

    t = cfg.teacher
    assert t.pretrained is not None and t.prompts is not None and t.resolution is not None
    shape = zimage_latent_shape(t.pretrained, t.resolution)
    from fewstep.diffusers_adapters.prompts import read_prompt_file

    if not Path(t.prompts).is_file():  # before the (slow) weights
        raise ConfigError(f"teacher.prompts: prompt file not found: {t.prompts}")
    if not read_prompt_file(t.prompts):
        raise ConfigError(f"teacher.prompts: {t.prompts} holds no prompts (one per line)")
    from diffusers import ZImagePipeline

    try:
        pipe = ZImagePipeline.from_pretrained(t.pretrained, **_dtype_kwargs(torch_dtype(t.dtype)))
    except (OSError, ValueError) as e:
        raise ConfigError(f"teacher.pretrained: cannot load a ZImagePipeline from "
                          f"{t.pretrained}: {_first_line(e)}") from None
    pipe = pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    for name in ("transformer", "text_encoder", "vae"):
        m = getattr(pipe, name, None)
        if isinstance(m, nn.Module):
            m.eval().requires_grad_(False)
    prompts = prompt_cache_for(pipe, t.prompts, cfg.cache.dir, t.max_sequence_length, device)
    # every embedding is cached now: the text encoder only re-encodes a corrupted shard
    if device.type != "cpu" and pipe.text_encoder is not None:
        pipe.text_encoder.to("cpu")
        prompts.encode_fn = pipeline_encode_fn(pipe, t.max_sequence_length, "cpu")
    den = ZImageDenoiser(pipe.transformer, null_embeds=prompts.null_embeds.to(device))
    den.eval().requires_grad_(False)

    @torch.no_grad()
    def to_images(latents: Tensor) -> Tensor:
        return decode(pipe.vae, latents).float()

    problem = PromptProblem(shape, prompts, decode=to_images)
    shift = float(pipe.scheduler.config.get("shift", 1.0) or 1.0)
    tcfg = {"kind": "zimage", "pretrained": t.pretrained, "dtype": t.dtype,
            "resolution": t.resolution, "latent_shape": list(shape),
            "max_sequence_length": t.max_sequence_length,
            "builder": list(den.builder_spec()),
            "sampling": {"steps": t.steps, "shift": shift, "cfg_scale": 1.0}}
    info = {**tcfg, "transformer_config": den.builder_spec()[1],
            "prompts_sha256": prompts.prompt_sha256}
    return LoadedTeacher(den, tcfg, _identity(info, pipe.transformer), problem, pipe)


# ----------------------------------------------------------------------------------- eps UNet
def load_unet_eps(cfg: DistillConfig, device: torch.device) -> LoadedTeacher:
    """``unet/`` + ``scheduler/`` folder -> frozen :class:`VPEpsilonDenoiser` on ``data``."""
    from diffusers import DDPMScheduler, UNet2DModel

    from fewstep.diffusers_adapters.unet_eps import VPEpsilonDenoiser

    t = cfg.teacher
    assert t.pretrained is not None
    try:
        unet = UNet2DModel.from_pretrained(t.pretrained, subfolder="unet",
                                           **_dtype_kwargs(torch_dtype(t.dtype)))
        sched = DDPMScheduler.from_pretrained(t.pretrained, subfolder="scheduler")
    except (OSError, ValueError) as e:
        raise ConfigError(f"teacher.pretrained: cannot load unet/ + scheduler/ from "
                          f"{t.pretrained}: {_first_line(e)}") from None
    problem = get_problem(cfg.data)
    ucfg = unet.config
    shape = (int(ucfg.in_channels), int(ucfg.sample_size), int(ucfg.sample_size))
    if shape != tuple(problem.data_shape):
        raise ConfigError(f"teacher.pretrained: the UNet takes samples of shape {shape} but data "
                          f"{cfg.data!r} has shape {tuple(problem.data_shape)}")
    n_emb = ucfg.num_class_embeds
    null_class = None
    if n_emb is None or getattr(unet, "class_embedding", None) is None:
        problem = Problem(problem.name, problem.data_shape, 0)  # unconditional teacher
    elif n_emb < problem.num_classes:
        raise ConfigError(f"teacher.pretrained: the UNet has {n_emb} class embeddings but data "
                          f"{cfg.data!r} has {problem.num_classes} classes")
    elif n_emb > problem.num_classes:
        null_class = problem.num_classes
    den = VPEpsilonDenoiser.from_scheduler(unet, sched, null_class=null_class)
    den = den.to(device).eval().requires_grad_(False)
    tcfg = {"kind": "unet_eps", "pretrained": t.pretrained, "dtype": t.dtype, "data": cfg.data,
            "null_class": null_class, "builder": list(den.builder_spec()),
            "sampling": {"steps": t.steps, "shift": 1.0, "cfg_scale": 1.0}}
    return LoadedTeacher(den, tcfg, _identity(tcfg, unet), problem, None)


def load_teacher(cfg: DistillConfig, device: torch.device) -> LoadedTeacher:
    """Any ``teacher.kind``: ``file`` goes through :func:`fewstep.distill.trainer.resolve_teacher`
    (the problem is ``data``'s), the others through :func:`load_diffusers_teacher`."""
    if cfg.teacher.kind == "file":
        from fewstep.distill.trainer import resolve_teacher

        den, tcfg, tid = resolve_teacher(cfg, device)
        return LoadedTeacher(den, tcfg, tid, get_problem(cfg.data))
    return load_diffusers_teacher(cfg, device)


__all__ = ["LoadedTeacher", "load_diffusers_teacher", "load_teacher", "load_unet_eps",
           "load_zimage", "prompt_cache_for", "torch_dtype", "weights_probe", "zimage_latent_shape"]
