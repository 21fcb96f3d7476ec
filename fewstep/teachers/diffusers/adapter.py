"""``teacher.kind: diffusers`` (and its alias ``zimage``) -- any diffusers text-to-image pipeline
whose denoiser (``pipe.transformer`` or ``pipe.unet``) belongs to a family of
:data:`fewstep.teachers.diffusers.families.FAMILIES`.

Read from the pipeline itself: flow matching vs VP (the scheduler class; ``alphas_cumprod``),
what the network predicts (``prediction_type``; flow: velocity times the family sign), the shift
(``shift`` / ``use_dynamic_shifting``), the N-step levels (``teacher.levels: pipeline``, see
:func:`fewstep.core.levels.pipeline_sigmas`), the latent shape and scaling (the VAE config) and
the prompt encoding (its own ``encode_prompt``, cached under
``cache.dir/prompt_embeds/<key>``; the empty prompt is the CFG null condition). Guidance:
``teacher.cfg_scale`` is our ``w`` (``d_u + w (d_c - d_u)``); the pipeline's ``guidance_scale``
g is ``w = g`` for SD / PixArt / Flux ``true_cfg_scale`` and ``w = 1 + g`` for Z-Image.
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

from fewstep.core.conditioning import PromptEmbeds
from fewstep.core.denoiser import Denoiser
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
from fewstep.teachers.diffusers.denoisers import FlowPipelineDenoiser, VPPipelineDenoiser
from fewstep.teachers.diffusers.families import FAMILIES, Family
from fewstep.teachers.diffusers.latents import LatentCodec
from fewstep.teachers.diffusers.prompt_cache import (
    PromptCache,
    encoder_fingerprint,
    pipeline_encode_fn,
    read_prompt_file,
)
from fewstep.teachers.diffusers.zimage import ZImageDenoiser
from fewstep.teachers.safety import require_safetensors

if TYPE_CHECKING:
    from fewstep.teachers.spec import TeacherSpec

log = logging.getLogger(__name__)

def denoiser_of(pipe: Any) -> nn.Module:
    """``pipe.transformer`` or ``pipe.unet``; ``ConfigError`` if neither."""
    for name in ("transformer", "unet"):
        net = getattr(pipe, name, None)
        if isinstance(net, nn.Module):
            return net
    raise ConfigError(f"teacher.pretrained: unsupported pipeline {type(pipe).__name__}: its "
                      "denoiser is neither a transformer nor a UNet")


def family_of(net: nn.Module) -> Family:
    name = type(net).__name__
    if name not in FAMILIES:
        raise ConfigError(f"teacher.pretrained: unsupported denoiser {name} (unknown call "
                          f"signature; known: {', '.join(sorted(FAMILIES))}); add a family "
                          "entry, see docs/adapters.md")
    return FAMILIES[name]


def latent_multiple(net: nn.Module) -> int:
    """Latent pixels per token side (patch size; UNet: its downsampling; Flux: 2x2 packing)."""
    cfg = net.config
    if type(net).__name__ == "FluxTransformer2DModel":
        return 2 * int(cfg.get("patch_size", 1))
    if "all_patch_size" in cfg:
        return int(next(iter(cfg["all_patch_size"])))
    if cfg.get("patch_size"):
        return int(cfg["patch_size"])
    return 2 ** (len(cfg.get("block_out_channels", [0])) - 1)


def latent_shape(vae_config: Any, multiple: int, resolution: int) -> tuple[int, int, int]:
    f = 2 ** (len(vae_config["block_out_channels"]) - 1)
    if resolution % (f * multiple) != 0:
        raise ConfigError(f"teacher.resolution: {resolution} is not divisible by {f * multiple} "
                          f"(VAE factor {f} x latent multiple {multiple})")
    return int(vae_config["latent_channels"]), resolution // f, resolution // f


def check_prompt_file(path: str) -> None:
    if not Path(path).is_file():
        raise ConfigError(f"teacher.prompts: prompt file not found: {path}")
    if not read_prompt_file(path):
        raise ConfigError(f"teacher.prompts: {path} holds no prompts (one per line)")


def prompt_cache_for(pipe: Any, prompt_file: str, cache_root: str | Path,
                     max_sequence_length: int, device: torch.device | str,
                     family: Family | None = None) -> PromptCache:
    """The :class:`PromptCache` of ``prompt_file`` under ``cache_root/prompt_embeds/<key>``,
    ``key`` = hash of the encoder fingerprint and the prompt file's content."""
    check_prompt_file(prompt_file)
    path = Path(prompt_file)
    fp = encoder_fingerprint(pipe, max_sequence_length)
    key = hashlib.sha256((fp + hashlib.sha256(path.read_bytes()).hexdigest()).encode())
    folder = Path(cache_root).expanduser() / "prompt_embeds" / key.hexdigest()[:16]
    fam = family or Family(call=lambda *a: None)
    fn = pipeline_encode_fn(pipe, max_sequence_length, device, fam.mask_index, fam.pooled_index)
    return PromptCache(folder, path, fn, fp)


def load_pipeline(pretrained: str, dtype: str) -> Any:
    """``DiffusionPipeline.from_pretrained`` from safetensors only (never remote code)."""
    from diffusers import DiffusionPipeline

    require_safetensors(pretrained)
    try:
        pipe = DiffusionPipeline.from_pretrained(pretrained, use_safetensors=True,
                                                 **dtype_kwargs(torch_dtype(dtype)))
    except (OSError, ValueError) as e:
        raise ConfigError(f"teacher.pretrained: cannot load a diffusers pipeline (safetensors "
                          f"only) from {pretrained}: {first_line(e)}") from None
    pipe.set_progress_bar_config(disable=True)
    return pipe


def pipeline_denoiser(pipe: Any, net: nn.Module, family: Family,
                   null: PromptEmbeds | None) -> Denoiser:
    """The fewstep denoiser of ``pipe``'s network (flow or VP, read from its scheduler)."""
    sched = pipe.scheduler
    fam_name = type(net).__name__
    if fam_name == "ZImageTransformer2DModel":
        return ZImageDenoiser(net, null_embeds=None if null is None else null.to_list()[0])
    if type(sched).__name__.startswith("FlowMatch"):
        return FlowPipelineDenoiser(net, fam_name, null)
    if not hasattr(sched, "alphas_cumprod"):
        raise ConfigError(f"teacher.pretrained: unsupported scheduler {type(sched).__name__} "
                          "(neither flow matching nor alphas_cumprod)")
    pred = sched.config.get("prediction_type", "epsilon")
    if pred not in ("epsilon", "v_prediction", "sample"):
        raise ConfigError(f"teacher.pretrained: unsupported prediction_type {pred!r}")
    return VPPipelineDenoiser(net, sched.alphas_cumprod, fam_name, pred, null)


def warn_x0_clipping(scheduler: Any) -> None:
    cfg = scheduler.config
    if cfg.get("clip_sample") or cfg.get("thresholding"):
        what = "clip_sample" if cfg.get("clip_sample") else "thresholding"
        log.warning("the pipeline's scheduler %s has %s=True (it clips / thresholds x0 at every "
                    "step); fewstep's teacher sampler does not, so its samples can differ from "
                    "the pipeline's", type(scheduler).__name__, what)


@TEACHER_KINDS.register("diffusers")
class DiffusersTeacher(TeacherAdapter):
    """Any supported diffusers text-to-image pipeline (see module docstring)."""
    fields = ("pretrained", "prompts", "resolution")
    family_required: ClassVar[str | None] = None
    default_levels: ClassVar[str] = "pipeline"

    def check(self, spec: TeacherSpec) -> None:
        super().check(spec)
        if spec.pretrained is None:
            raise ValueError(f"teacher.pretrained: required for teacher.kind {self.kind} (a "
                             "diffusers pipeline folder or hub id)")
        if spec.prompts is None:
            raise ValueError(f"teacher.prompts: required for teacher.kind {self.kind} (a text "
                             "file, one prompt per line)")
        if spec.resolution is None:
            raise ValueError(f"teacher.resolution: required for teacher.kind {self.kind} "
                             "(image size in pixels, e.g. 1024)")

    def check_data(self, spec: TeacherSpec, data: DataRef) -> None:
        if data != PROMPTS_DATA:
            raise ValueError(f"data: must be {PROMPTS_DATA!r} for teacher.kind {self.kind} "
                             f"(latents + prompts from teacher.prompts), got {data!r}")

    def load(self, spec: TeacherSpec, *, data: DataRef, cache_dir: str, device: torch.device
             ) -> LoadedTeacher:
        assert spec.pretrained is not None and spec.prompts is not None
        check_prompt_file(spec.prompts)  # before the (slow) weights
        self.meta(spec, data=data)  # configs only: family, VAE, resolution
        return self.from_pipeline(load_pipeline(spec.pretrained, spec.dtype), spec,
                                  cache_dir=cache_dir, device=device)

    def from_pipeline(self, pipe: Any, spec: TeacherSpec, *, cache_dir: str,
                      device: torch.device | str) -> LoadedTeacher:
        """Wrap an already loaded pipeline (moved to ``device`` and frozen)."""
        t = spec
        assert t.prompts is not None and t.resolution is not None
        net = denoiser_of(pipe)
        family = family_of(net)
        self._check_family(net)
        vae = getattr(pipe, "vae", None)
        if not isinstance(vae, nn.Module):
            raise ConfigError(f"teacher.pretrained: {type(pipe).__name__} has no VAE; fewstep "
                              "trains in a VAE's latent space (pipeline needs vae/)")
        if not hasattr(pipe, "encode_prompt"):
            raise ConfigError(f"teacher.pretrained: unsupported pipeline {type(pipe).__name__}: "
                              "no encode_prompt (only text-to-image pipelines)")
        shape = latent_shape(vae.config, latent_multiple(net), t.resolution)
        device = torch.device(device)
        pipe = pipe.to(device)
        for m in pipe.components.values():
            if isinstance(m, nn.Module):
                m.eval().requires_grad_(False)
        prompts = prompt_cache_for(pipe, t.prompts, cache_dir, t.max_sequence_length,
                                   device, family)
        # every embedding is cached now: text encoders only re-encode a corrupted shard
        if device.type != "cpu":
            for name in ("text_encoder", "text_encoder_2", "text_encoder_3"):
                m = getattr(pipe, name, None)
                if isinstance(m, nn.Module):
                    m.to("cpu")
            prompts.encode_fn = pipeline_encode_fn(pipe, t.max_sequence_length, "cpu",
                                                   family.mask_index, family.pooled_index)
        null = prompts.null(1)
        den = pipeline_denoiser(pipe, net, family, null).to(device).eval().requires_grad_(False)
        sched = pipe.scheduler
        warn_x0_clipping(sched)
        flow = type(sched).__name__.startswith("FlowMatch")
        own_shift = float(sched.config.get("shift", 1.0) or 1.0) if flow else 1.0
        shift = t.shift or own_shift
        seq_len = (shape[1] // 2) * (shape[2] // 2)
        sig, scale = resolve_teacher_sigmas(t.levels or self.default_levels, t.steps, shift,
                                            sched, seq_len)
        codec = LatentCodec(vae)

        @torch.no_grad()
        def to_images(latents: Tensor) -> Tensor:
            return codec.decode(latents).float()

        problem = PromptProblem(shape, prompts, decode=to_images)
        tcfg = {"kind": self.kind, "pretrained": t.pretrained, "dtype": t.dtype,
                "resolution": t.resolution, "latent_shape": list(shape),
                "max_sequence_length": t.max_sequence_length,
                "pipeline_class": type(pipe).__name__, "family": type(net).__name__,
                "builder": list(den.builder_spec()),
                "sampling": sampling_config(t, sig, shift, 1.0, scale)}
        info = {**tcfg, "prompts_sha256": prompts.prompt_sha256}
        return LoadedTeacher(den, tcfg, identity_of(info, net), problem, pipe, codec)

    def _check_family(self, net: nn.Module) -> None:
        if self.family_required and type(net).__name__ != self.family_required:
            raise ConfigError(f"teacher.kind: {self.kind} needs a {self.family_required} but the "
                              f"pipeline's denoiser is {type(net).__name__}; use teacher.kind "
                              "diffusers")

    def meta(self, spec: TeacherSpec, *, data: DataRef) -> MetaTeacher:
        t = spec
        assert t.pretrained is not None and t.resolution is not None
        try:
            index = _pipeline_index(t.pretrained)
            sub = next((n for n in ("transformer", "unet") if index.get(n)), None)
            if sub is None:
                raise ConfigError(f"teacher.pretrained: unsupported pipeline "
                                  f"{index.get('_class_name')}: its denoiser is neither a "
                                  "transformer nor a UNet")
            if not index.get("vae"):
                raise ConfigError(f"teacher.pretrained: {index.get('_class_name', 'the pipeline')}"
                                  " has no VAE; fewstep trains in a VAE's latent space (pipeline "
                                  "needs vae/)")
            cls_name = index[sub]
            model_cls = getattr(diffusers, cls_name, None)
            if model_cls is None or cls_name not in FAMILIES:
                raise ConfigError(f"teacher.pretrained: unsupported denoiser {cls_name} (unknown "
                                  f"call signature; known: {', '.join(sorted(FAMILIES))}); add "
                                  "a family entry, see docs/adapters.md")
            ncfg = model_cls.load_config(t.pretrained, subfolder=sub)
            vcfg = diffusers.AutoencoderKL.load_config(t.pretrained, subfolder="vae")
        except (OSError, ValueError, KeyError) as e:
            raise ConfigError(f"teacher.pretrained: cannot read the pipeline's configs from "
                              f"{t.pretrained}: {first_line(e)}") from None
        with torch.device("meta"):
            net = model_cls.from_config(ncfg)
        self._check_family(net)
        den: nn.Module  # the wrapper's own buffers are small: built off meta
        if cls_name == "ZImageTransformer2DModel":
            den = ZImageDenoiser(net)
        elif str(index.get("scheduler", "FlowMatch")).startswith("FlowMatch"):
            den = FlowPipelineDenoiser(net, cls_name)
        else:  # placeholder levels (counting only)
            den = VPPipelineDenoiser(net, torch.linspace(0.999, 0.001, 1000), cls_name)
        shape = latent_shape(vcfg, latent_multiple(net), t.resolution)
        return MetaTeacher(den, shape, 0,
                           {"kind": self.kind, "pretrained": t.pretrained, "family": cls_name})


def _pipeline_index(pretrained: str) -> dict[str, str | None]:
    """Component name -> class name, from ``model_index.json`` or (a local folder without
    one) from each component's own config."""
    try:
        raw = diffusers.DiffusionPipeline.load_config(pretrained)
        out: dict[str, str | None] = {"_class_name": raw.get("_class_name")}
        for k, v in raw.items():
            if isinstance(v, list | tuple) and len(v) == 2:
                out[k] = v[1]
        return out
    except (OSError, ValueError):
        root = Path(pretrained).expanduser()
        if not root.is_dir():
            raise
    out = {}
    for sub in ("transformer", "unet", "vae", "scheduler"):
        f = root / sub / ("scheduler_config.json" if sub == "scheduler" else "config.json")
        if f.is_file():
            out[sub] = json.loads(f.read_text(encoding="utf-8")).get("_class_name")
    return out


@TEACHER_KINDS.register("zimage")
class ZImageTeacher(DiffusersTeacher):
    """``teacher.kind: zimage``: the ``diffusers`` adapter restricted to Z-Image, with the
    uniform shifted schedule as default (as before the registry)."""
    family_required = "ZImageTransformer2DModel"
    default_levels = "uniform"


__all__ = [
    "DiffusersTeacher",
    "ZImageTeacher",
    "check_prompt_file",
    "denoiser_of",
    "family_of",
    "latent_multiple",
    "latent_shape",
    "load_pipeline",
    "pipeline_denoiser",
    "prompt_cache_for",
    "warn_x0_clipping",
]
