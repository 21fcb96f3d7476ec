"""Save / load a K-step student as a diffusers-style folder (safetensors + JSON, no pickle).

Minimal protocol (all the student class has to provide):

* the steps: either a sequence of K ``nn.Module`` s (mode ``full``, one independent copy per
  step) or one :class:`~fewstep.student.lora.PerStepLoRA` (mode ``lora``, shared
  base + one adapter per step). A step is called as ``step(x, sigma, cond) -> x0_hat``
  (a :class:`~fewstep.Denoiser`); with LoRA, ``lora.step_forward(k, x, sigma, cond)``;
* the sigma schedule: K input noise levels ``1 = sigma_1 > ... > sigma_K > 0``;
* a *builder*: ``(target, kwargs)`` where ``target = "package.module:callable"`` (a class or a
  function, dotted attributes allowed after the colon, e.g. ``"...:ZImageDenoiser.from_config"``)
  and ``kwargs`` is JSON. ``callable(**kwargs)`` must return a fresh module of the step's (or
  LoRA base's) architecture, any initialisation; the saved weights are loaded into it with
  ``strict=True``. A module may supply its own via a ``builder_spec()`` method; diffusers
  ``ModelMixin`` s get one automatically (:func:`diffusers_model_from_config`).

Folder layout::

    student_index.json      format, mode, num_steps, sigmas, builder, lora config, extra
    step0/model.safetensors  (full)    |  base/model.safetensors      (lora; original names)
    step1/model.safetensors            |  step0/adapter.safetensors   (peft keys:
    ...                                |  step1/adapter.safetensors ... <layer>.lora_A.weight)

This is fewstep's own format, for networks without a diffusers counterpart (``teacher.kind:
file``); students of diffusers teachers are exported in the diffusers format by
:func:`fewstep.export.diffusers_export.export_student`.

Loading only imports builders from modules under ``allowed_prefixes`` (default ``fewstep`` and
``diffusers``) so a folder cannot name arbitrary callables.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from safetensors import safe_open
from safetensors.torch import load_file, load_model, save_file, save_model
from torch import Tensor, nn

from fewstep.core.denoiser import Denoiser
from fewstep.core.noise_correction import NoiseCorrected, resolve_noise_correction
from fewstep.student.lora import PerStepLoRA
from fewstep.utils.imports import TRUSTED_BUILDERS, import_callable

FORMAT = "fewstep-student-v1"
INDEX = "student_index.json"
DEFAULT_ALLOWED = TRUSTED_BUILDERS
BuilderSpec = tuple[str, dict[str, Any]]


@runtime_checkable
class HasBuilderSpec(Protocol):
    """A module that names its own builder: ``builder_spec() -> (target, kwargs)``."""

    def builder_spec(self) -> BuilderSpec: ...


def diffusers_model_from_config(class_name: str, config: dict[str, Any]) -> nn.Module:
    """Builder for a diffusers model: ``getattr(diffusers, class_name).from_config(config)``."""
    import diffusers

    cls = getattr(diffusers, class_name, None)
    if not (isinstance(cls, type) and issubclass(cls, diffusers.ModelMixin)):
        raise ValueError(f"{class_name!r} is not a diffusers model class")
    return cls.from_config(config)


def builder_spec_of(module: nn.Module) -> BuilderSpec:
    """The module's own ``builder_spec()``, or one for a diffusers ``ModelMixin``."""
    if isinstance(module, HasBuilderSpec):
        target, kwargs = module.builder_spec()
        return target, dict(kwargs)
    cfg = getattr(module, "config", None)
    if cfg is not None and type(module).__module__.startswith("diffusers."):
        conf = {k: (list(v) if isinstance(v, tuple) else v) for k, v in dict(cfg).items()
                if not k.startswith("_")}
        return (f"{__name__}:diffusers_model_from_config",
                {"class_name": type(module).__name__, "config": conf})
    raise ValueError(f"cannot infer a builder for {type(module).__name__}; pass builder=")


def resolve_builder(target: str, allowed_prefixes: Sequence[str] = DEFAULT_ALLOWED
                    ) -> Callable[..., nn.Module]:
    """The builder ``"package.module:attr.attr"``, if its module is under an allowed prefix
    (``ValueError`` otherwise, see :func:`fewstep.utils.imports.import_callable`)."""
    return import_callable(target, allowed_prefixes)


def _build(spec: dict[str, Any], allowed_prefixes: Sequence[str]) -> nn.Module:
    module = resolve_builder(spec["target"], allowed_prefixes)(**spec["kwargs"])
    if not isinstance(module, nn.Module):
        raise TypeError(f"builder {spec['target']} returned {type(module).__name__}, not nn.Module")
    return module


def write_student_folder(folder: str | os.PathLike[str], steps: Sequence[nn.Module] | PerStepLoRA,
                 sigmas: Sequence[float] | Tensor, builder: BuilderSpec | None = None,
                 extra: dict[str, Any] | None = None) -> Path:
    """Write the student (see module docstring). Returns the folder path."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    sig = torch.as_tensor(sigmas, dtype=torch.float64).flatten().tolist()
    is_lora = isinstance(steps, PerStepLoRA)
    k = steps.num_steps if isinstance(steps, PerStepLoRA) else len(steps)
    if len(sig) != k:
        raise ValueError(f"{len(sig)} sigmas for {k} steps")
    if builder is None:
        builder = builder_spec_of(steps.base if isinstance(steps, PerStepLoRA) else steps[0])
    index: dict[str, Any] = {
        "format": FORMAT, "mode": "lora" if is_lora else "full", "num_steps": k, "sigmas": sig,
        "builder": {"target": builder[0], "kwargs": builder[1]}, "extra": extra or {},
    }
    if isinstance(steps, PerStepLoRA):
        index["lora"] = {"rank": steps.rank, "alpha": steps.alpha, "dropout": steps.dropout,
                         "targets": steps.targets}
        (out / "base").mkdir(exist_ok=True)
        base_sd = {n: t.detach().contiguous().cpu().clone()
                   for n, t in steps.base_state_dict().items()}
        save_file(base_sd, str(out / "base/model.safetensors"))
        for i in range(k):
            (out / f"step{i}").mkdir(exist_ok=True)
            ad = {n: t.contiguous().cpu().clone() for n, t in steps.adapter_state_dict(i).items()}
            save_file(ad, str(out / f"step{i}/adapter.safetensors"))
    else:
        for i, m in enumerate(steps):
            (out / f"step{i}").mkdir(exist_ok=True)
            save_model(m, str(out / f"step{i}/model.safetensors"))
    (out / INDEX).write_text(json.dumps(index, indent=1), encoding="utf-8")
    return out


def _single_float_dtype(tensors: dict[str, Tensor]) -> torch.dtype | None:
    dts = {t.dtype for t in tensors.values() if t.is_floating_point()}
    return dts.pop() if len(dts) == 1 else None


def _file_float_dtype(path: str) -> torch.dtype | None:
    """The one floating dtype of a safetensors file's tensors (header only), else ``None``."""
    names = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16,
             "BF16": torch.bfloat16}
    with safe_open(path, framework="pt") as f:
        dts = {f.get_slice(k).get_dtype() for k in f.keys()}  # noqa: SIM118
    floats = {names[d] for d in dts if d in names}
    return floats.pop() if len(floats) == 1 else None


def _to_saved_dtype(module: nn.Module, tensors: dict[str, Tensor]) -> None:
    """Cast a freshly built module to the dtype its saved weights have (if they share one), so
    a reloaded student computes exactly as the saved one did."""
    dt = _single_float_dtype(tensors)
    if dt is not None:
        module.to(dt)


@dataclass
class ExportedStudent:
    """A reloaded student: ``steps`` (mode ``full``) or ``lora`` (mode ``lora``) + ``sigmas``."""

    sigmas: Tensor
    steps: list[nn.Module] = field(default_factory=list)
    lora: PerStepLoRA | None = None
    index: dict[str, Any] = field(default_factory=dict)

    @property
    def num_steps(self) -> int:
        return int(self.sigmas.numel())

    def step_fn(self, noise_correction: bool | None = None
                ) -> Callable[[int, Tensor, Tensor, Any], Tensor]:
        """``(k, x, sigma, cond) -> x0_hat`` for :func:`fewstep.core.samplers.sample`. Rows at
        ``sigma = 1`` of a zero-terminal-SNR epsilon student get the noise-corrected prediction
        it was trained with (:mod:`fewstep.core.noise_correction`; ``None``: on exactly
        there, ``False``: off). A step that is a bare network, not a
        :class:`~fewstep.core.denoiser.Denoiser`, is called as it is (noise correction is a
        pass-through for it)."""
        if self.lora is not None:
            lora, base = self.lora, self.lora.base
            if not (isinstance(base, Denoiser)
                    and resolve_noise_correction(base, noise_correction)):
                return lora.step_fn()
            corrected = NoiseCorrected(base)

            def lora_fn(k: int, x: Tensor, sigma: Tensor, cond: Any) -> Tensor:
                with lora.use_step(k):
                    return corrected(x, sigma, cond)
            return lora_fn
        steps = [s for s in self.steps if isinstance(s, Denoiser)]
        if len(steps) == len(self.steps) and resolve_noise_correction(steps[0], noise_correction):
            return lambda k, x, sigma, cond: NoiseCorrected(steps[k])(x, sigma, cond)
        return lambda k, x, sigma, cond: self.steps[k](x, sigma, cond)

    def modules(self) -> list[nn.Module]:
        return [self.lora] if self.lora is not None else list(self.steps)


def read_student_folder(folder: str | os.PathLike[str], device: torch.device | str = "cpu",
                 dtype: torch.dtype | None = None,
                 allowed_prefixes: Sequence[str] = DEFAULT_ALLOWED) -> ExportedStudent:
    """Rebuild a student written by :func:`write_student_folder` (eval mode, on ``device``)."""
    root = Path(folder)
    index = json.loads((root / INDEX).read_text(encoding="utf-8"))
    if index.get("format") != FORMAT:
        raise ValueError(f"{root} is not a {FORMAT} folder (format={index.get('format')!r})")
    sigmas = torch.tensor(index["sigmas"], dtype=torch.float32)
    k = int(index["num_steps"])
    if index["mode"] == "lora":
        base = _build(index["builder"], allowed_prefixes)
        base_sd = load_file(str(root / "base/model.safetensors"))
        _to_saved_dtype(base, base_sd)
        base.load_state_dict(base_sd, strict=True)
        cfg = index["lora"]
        lora = PerStepLoRA(base, k, rank=cfg["rank"], alpha=cfg["alpha"], dropout=cfg["dropout"],
                           target_modules=[f"re:{re.escape(n)}" for n in cfg["targets"]])
        for i in range(k):
            ad = load_file(str(root / f"step{i}/adapter.safetensors"))
            dt = _single_float_dtype(ad)
            if dt is not None:  # e.g. float32 adapters on a bfloat16 base, as trained
                for p in lora.step_parameters(i):
                    p.data = p.data.to(dt)
            lora.load_adapter_state_dict(i, ad)
        lora.to(device=device, dtype=dtype).eval()
        return ExportedStudent(sigmas=sigmas, lora=lora, index=index)
    if index["mode"] != "full":
        raise ValueError(f"unknown student mode {index['mode']!r}")
    steps = []
    for i in range(k):
        m = _build(index["builder"], allowed_prefixes)
        path = str(root / f"step{i}/model.safetensors")
        dt = _file_float_dtype(path)
        if dt is not None:
            m.to(dt)
        load_model(m, path, strict=True)
        steps.append(m.to(device=device, dtype=dtype).eval())
    return ExportedStudent(sigmas=sigmas, steps=steps, index=index)


__all__ = ["ExportedStudent", "builder_spec_of", "diffusers_model_from_config",
           "read_student_folder", "resolve_builder", "write_student_folder"]
