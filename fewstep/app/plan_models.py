"""The models ``fewstep plan`` counts, built on the **meta** device from configs only: the
teacher (its adapter's ``meta``; a hub id read from the configs fewstep ships in
``fewstep/assets/configs`` or the local Hugging Face cache, never downloaded), the student for
its parameterisation, the EMA and the recipe's auxiliary networks; and what the student owns
beyond the teacher's own tensors."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fewstep.assets import ASSETS
from fewstep.core.denoiser import Denoiser
from fewstep.distill.config import DistillConfig
from fewstep.distill.context import DistillContext
from fewstep.distill.methods.registry import method_class
from fewstep.errors import ConfigError
from fewstep.student.factory import student_from_spec
from fewstep.teachers import meta_teacher

SHIPPED_CONFIGS = ASSETS / "configs"


def shipped_config_ids() -> list[str]:
    """Hub ids whose public configs ship with fewstep (offline ``plan``)."""
    index = json.loads((SHIPPED_CONFIGS / "index.json").read_text())
    return sorted(k for k in index if not k.startswith("_"))


def offline_pretrained(pretrained: str) -> str:
    """A local folder holding ``pretrained``'s configs, without network access: a local
    folder itself; for a hub id the project ships configs for, the shipped folder
    (``model_index.json`` + ``<component>/config.json``, the public sizes); another hub id from
    the local Hugging Face cache. :class:`ConfigError` naming ``teacher.pretrained`` otherwise.
    """
    if Path(pretrained).expanduser().is_dir():
        return pretrained
    index = json.loads((SHIPPED_CONFIGS / "index.json").read_text())
    if pretrained in index:
        return str(SHIPPED_CONFIGS / index[pretrained])
    from huggingface_hub import snapshot_download

    try:
        return str(snapshot_download(pretrained, local_files_only=True,
                                     allow_patterns=["*.json"]))
    except Exception as e:
        raise ConfigError(
            f"teacher.pretrained: no configs for {pretrained!r} offline (not a local folder, "
            f"not in the Hugging Face cache; configs ship for "
            f"{', '.join(shipped_config_ids())}): {str(e).splitlines()[0]}") from None


def model_config(folder: str, subfolder: str) -> dict[str, Any] | None:
    """``<subfolder>/config.json`` of a local pipeline folder (``None`` if absent)."""
    f = Path(folder).expanduser() / subfolder / "config.json"
    return json.loads(f.read_text()) if f.is_file() else None


def _meta_count(build: Callable[[], nn.Module]) -> int:
    with torch.device("meta"):
        return sum(p.numel() for p in build().parameters())


def pipeline_parts(folder: str) -> dict[str, int]:
    """Parameter counts of a pipeline's VAE and (Qwen3) text encoder (0 when unknown), from
    the configs in a local ``folder``."""
    from diffusers import AutoencoderKL

    out = {"vae": 0, "text_encoder": 0, "text_hidden": 0}
    vcfg = model_config(folder, "vae")
    if vcfg is not None:
        out["vae"] = _meta_count(lambda: AutoencoderKL.from_config(vcfg))
    tcfg = model_config(folder, "text_encoder")
    if tcfg is not None and tcfg.get("model_type") == "qwen3":
        from transformers import Qwen3Config, Qwen3Model

        keep = {k: v for k, v in tcfg.items() if not k.startswith("_") and k != "architectures"}
        out["text_encoder"] = _meta_count(lambda: Qwen3Model(Qwen3Config(**keep)))
        out["text_hidden"] = int(tcfg["hidden_size"])
    return out


def _as_denoiser(m: nn.Module) -> Denoiser:
    if not isinstance(m, Denoiser):
        raise TypeError(f"the teacher is a {type(m).__name__}, not a fewstep Denoiser")
    return m


def offline_meta_teacher(cfg: DistillConfig
                         ) -> tuple[Denoiser, tuple[int, ...], int, dict[str, Any]]:
    """``(teacher on meta, sample shape, num_classes, info)`` from configs only (the teacher
    registry's adapter for ``teacher.kind``; a hub id is read offline, see
    :func:`offline_pretrained`)."""
    t = spec = cfg.teacher
    if t.pretrained is not None:
        local = offline_pretrained(t.pretrained)
        if local != t.pretrained:
            spec = t.model_copy(update={"pretrained": local})
    m = meta_teacher(spec, data=cfg.data)
    info = dict(m.info)
    if t.pretrained is not None:
        info.update(pretrained=t.pretrained, config_folder=spec.pretrained)
    return _as_denoiser(m.module), tuple(m.data_shape), m.num_classes, info


def _fake_features(den: nn.Module, shape: tuple[int, ...]) -> None:
    """Give a meta teacher a ``features`` that returns meta tensors of the right widths (a
    meta forward of a diffusers transformer is not possible with prompt embeddings)."""
    dims = feature_widths(den)
    if dims is None:
        return

    def features(x: torch.Tensor, sigma: Any, cond: Any = None) -> list[torch.Tensor]:
        return [torch.empty((x.shape[0], d), device="meta") for d in dims]

    # an instance attribute shadowing the method (what ``nn.Module.__setattr__`` does with a
    # function; spelled out because the type checker rejects assigning to a method)
    object.__setattr__(den, "features", features)


def feature_widths(den: nn.Module) -> list[int] | None:
    """Width of each of ``den.features`` where known from the architecture."""
    widths = getattr(den, "feature_widths", None)
    if widths is not None:  # the generic diffusers denoisers say it themselves
        return list(widths())
    tr = getattr(den, "transformer", None)
    layers = getattr(den, "feature_layers", None)
    if tr is not None and layers is not None:
        return [int(tr.config.dim)] * len(layers)
    net = getattr(den, "net", None)
    if net is not None and hasattr(net, "blocks") and hasattr(net, "inp"):  # ResMLP
        return [int(net.inp.out_features)] * (len(net.blocks) + 1)
    return None


def meta_models(cfg: DistillConfig) -> tuple[dict[str, nn.Module], tuple[int, ...], dict]:
    """Teacher, student, EMA (= student) and the recipe's aux modules, all on meta."""
    from fewstep.core.levels import student_sigmas
    from fewstep.data.problem import Problem

    teacher, shape, ncls, info = offline_meta_teacher(cfg)
    teacher.requires_grad_(False)
    _fake_features(teacher, shape)
    info["_teacher_ids"] = [id(p) for p in teacher.parameters()]
    s = cfg.student
    sig = student_sigmas(s.num_steps, cfg.teacher.steps, cfg.teacher.shift or 1.0, s.sigmas)
    with torch.device("meta"):  # new modules (LoRA adapters, heads) on meta too
        student = student_from_spec(teacher, s, sig)
    if s.parameterization != "lora":
        for p in student.parameters():
            p.requires_grad_(True)
    problem = Problem(cfg.data, shape, ncls)
    example = torch.empty((2, *shape), device="meta")
    ctx = DistillContext(cfg, problem, teacher, 1.0, student, torch.device("meta"),
                         torch.Generator(), example, None)
    with torch.device("meta"):
        method = method_class(cfg.method)(ctx)
    return {"teacher": teacher, "student": student, "method": method}, shape, info


def param_counts(m: nn.Module) -> tuple[int, int]:
    total = sum(p.numel() for p in m.parameters())
    return total, sum(p.numel() for p in m.parameters() if p.requires_grad)


def owned(student: nn.Module, shared: set[int]) -> tuple[int, int]:
    """``(frozen, trainable)`` parameters the student holds *besides* the teacher's own tensors
    (``shared``: ``id`` of each teacher parameter, taken before the student was built), so a
    base shared with the teacher is not counted again."""
    frozen = train = 0
    for p in student.parameters():
        if id(p) in shared:
            continue
        if p.requires_grad:
            train += p.numel()
        else:
            frozen += p.numel()
    return frozen, train


def lora_student_parts(cfg: DistillConfig, teacher: nn.Module) -> tuple[int, int, int] | None:
    """``(total, own frozen, trainable)`` of the same student with ``parameterization: lora``
    (``None`` if the LoRA settings do not fit the teacher)."""
    from fewstep.student.lora import find_lora_targets
    from fewstep.student.student import Student, resolve_lora_targets

    s = cfg.student
    try:
        find_lora_targets(teacher, resolve_lora_targets(teacher, s.lora_targets), s.lora_rank)
    except ValueError:
        return None
    sig = torch.linspace(1.0, 0.5, s.num_steps)
    shared = {id(p) for p in teacher.parameters()}
    with torch.device("meta"):
        st = Student(_as_denoiser(teacher), sig, "lora", s.transition, s.lora_rank,
                     s.lora_alpha, s.lora_targets)
    frozen, train = owned(st, shared)
    return param_counts(st)[0], frozen, train


# --------------------------------------------------------------------------------------------
# Activations
# --------------------------------------------------------------------------------------------
