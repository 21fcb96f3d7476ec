"""Export a K-step student as a folder plain diffusers loads.

Students of diffusers teachers are written in the diffusers format by :func:`export_student`
(format ``fewstep-diffusers-student-v1``), in one of two families (``fewstep_student.json``
``family``):

* ``pipeline`` -- a text-to-image pipeline teacher (``teacher.kind`` ``diffusers`` / ``zimage``,
  any supported family): the teacher's own pipeline class;
* ``unet_eps`` -- a VP ``UNet2DModel`` teacher: a ``DDPMPipeline``.

Layout::

    README.md                model card: teacher, recipe, steps, sigmas, metrics, sampling code
    fewstep_student.json     every setting in machine-readable form (INFO below)
    model_index.json         the stock pipeline: decoupled and shared students always, LoRA
                             students with components = full
    transformer/ | unet/     step 0's network (decoupled, shared) or the base (LoRA, full)
    transformer_step1/ ...   decoupled: one more folder per step (config.json + safetensors)
    step0/adapter.safetensors, step0/adapter_config.json, step1/...
                             LoRA: one adapter per step, diffusers / peft keys
                             (``transformer.<layer>.lora_A.weight``), the peft config in the
                             ``lora_adapter_metadata`` header
    vae/ text_encoder*/ tokenizer*/ scheduler/   (pipeline students: the teacher's, as trained)

A LoRA student references its base (the teacher's ``pretrained`` hub id or folder) unless
``components = "full"`` copies it. Every tensor keeps its dtype. The model card's code samples
the student with diffusers alone (:mod:`fewstep.export.model_card`); ``fewstep sample
--student FOLDER`` samples it with fewstep's sampler
(:class:`~fewstep.export.student_pipeline.StudentPipeline`).

Students of other teachers (``teacher.kind: file`` / ``custom``) use fewstep's own folder format
(:mod:`fewstep.export.native`, ``student_index.json``), which needs fewstep.
"""

from __future__ import annotations

import inspect
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Literal

import torch
from diffusers.configuration_utils import ConfigMixin
from diffusers.models.modeling_utils import ModelMixin
from safetensors.torch import save_file
from torch import Tensor, nn

from fewstep.export.metadata import describe_export, describe_native
from fewstep.export.model_card import model_card
from fewstep.export.native import write_student_folder
from fewstep.export.pipeline_info import pipeline_info
from fewstep.teachers.diffusers.vp import VPEpsilonDenoiser

Components = Literal["auto", "reference", "full", "copy"]

#: ``fewstep_student.json``: format, family, parameterization, transition, num_steps, sigmas,
#: component, step_subfolders (full) | lora {rank, alpha, targets, files, dtype}, base {source,
#: copied, fingerprint}, dtypes {pipeline, denoiser}, latent_shape, num_classes, teacher,
#: run {method, student, recipe}, metrics; family ``unet_eps``: unet {timesteps,
#: prediction_type, null_class, min_one_minus_sigma}; family ``pipeline``: pipeline_class,
#: network_class, height, width, call (``__call__`` kwargs as the teacher was read),
#: sampling_call (those that switch guidance off), scheduler {vp, prediction, times,
#: min_one_minus_sigma} (the StudentScheduler's), noise {input_layout, loop_layout, dtype}.
INFO = "fewstep_student.json"
FORMAT = "fewstep-diffusers-student-v1"
PIPELINE, UNET = "pipeline", "unet_eps"


def export_family(teacher_config: dict[str, Any]) -> str | None:
    """``pipeline`` (a pipeline teacher), ``unet_eps``, or ``None`` (fewstep's own format)."""
    if "pipeline_class" in teacher_config:
        return PIPELINE
    return UNET if teacher_config.get("kind") == UNET else None


def normalise_components(components: str, lora: bool) -> str:
    """``auto`` / ``copy`` / ``full`` / ``reference`` -> ``full`` | ``reference``."""
    c = {"copy": "full", "auto": "reference" if lora else "full"}.get(components, components)
    if c not in ("full", "reference"):
        raise ValueError(f"components must be auto|reference|full, got {components!r}")
    return c if lora else "full"


def network_attribute(denoiser: nn.Module) -> str:
    """The child of a fewstep denoiser that is its diffusers network (a pipeline denoiser:
    the component name, ``transformer`` / ``unet``; the VP UNet wrapper: ``unet``)."""
    for name, child in denoiser.named_children():
        if type(child).__module__.startswith("diffusers."):
            return name
    raise ValueError(f"{type(denoiser).__name__} holds no diffusers network")


def export_student(student: Any, folder: str | os.PathLike[str], teacher_config: dict[str, Any],
                   pipeline: Any = None, components: Components = "auto",
                   num_classes: int = 0, latent_shape: tuple[int, ...] | None = None,
                   extra: dict[str, Any] | None = None, run: dict[str, Any] | None = None,
                   metrics: dict[str, Any] | None = None) -> Path:
    """Write a :class:`~fewstep.student.student.Student` (all K steps) as a folder.

    Args:
        student: the (EMA) student.
        teacher_config: the trainer's teacher config (``kind``, ``pretrained``, ``dtype``, ...).
        pipeline: the teacher's diffusers pipeline (pipeline students: its components are
            copied, and its call is read for the sampling code).
        components: ``reference`` (LoRA: the base stays at the teacher's ``pretrained``),
            ``full`` (copy everything; ``copy`` is an alias) or ``auto`` (LoRA: reference,
            others: full). Decoupled / shared students are always complete pipelines.
        num_classes / latent_shape: what the sampler draws (labels ``i % C``; noise shape).
        run / metrics: the run's config (``method``, ``student``, recipe sections) and metrics
            for the model card.
    """
    shape = list(latent_shape if latent_shape is not None
                 else teacher_config.get("latent_shape", []))
    family = export_family(teacher_config)
    if family is not None:
        return _export_diffusers(student, Path(folder), teacher_config, family, pipeline,
                                 components, num_classes, shape, run or {}, metrics or {})
    if "builder" in teacher_config:
        target, kwargs = teacher_config["builder"]
        builder = (str(target), dict(kwargs))
    else:
        builder = ("fewstep.teachers.training:denoiser_from_config", {"config": teacher_config})
    k = student.num_steps
    steps = student.lora if student.lora is not None else \
        [student.step_denoiser(i) for i in range(k)]
    info = {"pipeline": teacher_config.get("kind", "file"), "transition": student.transition,
            "teacher": {key: v for key, v in teacher_config.items() if key != "builder"},
            "components": "none", "latent_shape": shape, "num_classes": int(num_classes),
            "max_sequence_length": teacher_config.get("max_sequence_length"), **(extra or {})}
    out = write_student_folder(Path(folder), steps, student.sigmas.detach().cpu(), builder,
                               extra=info)
    describe_native(out)  # self-describing files (#23)
    return out


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _clean_model(model: ModelMixin, state: dict[str, Tensor]) -> ModelMixin:
    """A fresh diffusers model of ``model``'s class and config holding ``state`` (no LoRA
    layers), built on the meta device so no extra copy of the weights is made."""
    assert isinstance(model, ConfigMixin)  # a diffusers model is a ModelMixin and ConfigMixin
    cls = type(model)

    def fresh() -> ModelMixin:
        made = cls.from_config(dict(model.config))
        assert not isinstance(made, tuple)  # a tuple only with return_unused_kwargs=True
        return made

    try:
        with torch.device("meta"):
            clean = fresh()
        clean.load_state_dict(state, strict=True, assign=True)
    except (RuntimeError, NotImplementedError):
        clean = fresh().to(next(iter(state.values())).dtype)
        clean.load_state_dict(state, strict=True)
    return clean


def _stock_pipeline(family: str, comp: str, net: nn.Module, pipeline: Any,
                    pretrained: str | None) -> Any:
    """The pipeline written to the folder: the teacher's class with ``net`` as ``comp``."""
    if family == PIPELINE:
        if pipeline is None:
            raise ValueError("exporting a complete pipeline needs the teacher pipeline")
        cls = type(pipeline)
        params = inspect.signature(cls.__init__).parameters
        kwargs = {k: v for k, v in pipeline.components.items() if k in params}
        kwargs[comp] = net
        if "requires_safety_checker" in params:
            kwargs["requires_safety_checker"] = bool(
                pipeline.config.get("requires_safety_checker", False))
        return cls(**kwargs)
    from diffusers import DDPMPipeline, DDPMScheduler

    if pretrained is None:
        raise ValueError("exporting a unet_eps student needs teacher.pretrained (its scheduler)")
    return DDPMPipeline(unet=net, scheduler=DDPMScheduler.from_pretrained(
        pretrained, subfolder="scheduler"))


def _write_adapter(lora: Any, k: int, comp: str, out: Path, attr: str) -> None:
    """Step ``k``'s adapter as ``out/adapter.safetensors`` (keys ``<comp>.<layer>.lora_A.weight``,
    the denoiser's own ``attr.`` prefix replaced by the pipeline component ``comp``) and
    ``out/adapter_config.json`` (peft ``LoraConfig`` kwargs, targets relative to the network)."""
    cfg = lora.adapter_config()
    cfg["target_modules"] = [t.removeprefix(attr + ".") for t in cfg["target_modules"]]
    meta = {"format": "pt",
            "lora_adapter_metadata": json.dumps({f"{comp}.{key}": v for key, v in cfg.items()},
                                                sort_keys=True)}
    out.mkdir(parents=True, exist_ok=True)
    sd = {comp + n.removeprefix(attr): t.detach().contiguous().cpu().clone()
          for n, t in lora.adapter_state_dict(k).items()}
    save_file(sd, str(out / "adapter.safetensors"), metadata=meta)
    (out / "adapter_config.json").write_text(json.dumps(cfg, indent=1), encoding="utf-8")


def _unet_info(den0: VPEpsilonDenoiser, sigmas: Tensor) -> dict[str, Any]:
    return {"unet": {"timesteps": [float(t) for t in den0.timestep(sigmas).tolist()],
                     "prediction_type": den0.prediction_type, "null_class": den0.null_class,
                     "min_one_minus_sigma": float(den0.min_one_minus_sigma)}}


def _export_diffusers(student: Any, out: Path, tcfg: dict[str, Any], family: str, pipeline: Any,
                      components: str, num_classes: int, shape: list[int], run: dict[str, Any],
                      metrics: dict[str, Any]) -> Path:
    """The one function that writes a diffusers-format folder (both families)."""
    lora = student.lora
    k_steps = student.num_steps
    comps = normalise_components(components, lora is not None)
    pretrained = tcfg.get("pretrained")
    if pretrained and Path(pretrained).expanduser().exists():  # a local folder: absolute
        pretrained = str(Path(pretrained).expanduser().resolve())
    if lora is not None and comps == "reference" and not pretrained:
        raise ValueError("components=reference needs the teacher's pretrained hub id / folder")
    den0 = student.step_denoiser(0)
    attr = network_attribute(den0)
    comp = str(tcfg.get("component", attr)) if family == PIPELINE else "unet"
    sigmas = student.sigmas.detach().cpu().float()
    info: dict[str, Any] = {
        "format": FORMAT, "family": family, "parameterization": student.parameterization,
        "transition": student.transition, "num_steps": k_steps,
        "sigmas": [float(x) for x in sigmas.tolist()],
        "component": comp, "latent_shape": shape, "num_classes": int(num_classes),
        "teacher": {key: v for key, v in tcfg.items() if key != "builder"},
        "run": run, "metrics": metrics, "dtypes": {},
    }
    if family == PIPELINE:
        info.update(pipeline_info(den0, sigmas, tcfg, pipeline, student.transition))
    else:
        info.update(_unet_info(den0, sigmas))
    out = out.expanduser().resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        if lora is not None:
            model = getattr(lora.base, attr)
            if any(not t.startswith(attr + ".") for t in lora.targets):
                raise ValueError(f"LoRA targets outside {attr!r} cannot be exported")
            info["lora"] = {"rank": lora.rank, "alpha": lora.alpha,
                            "targets": [t.removeprefix(attr + ".") for t in lora.targets],
                            "files": [f"step{k}/adapter.safetensors" for k in range(k_steps)],
                            "dtype": _dtype_name(lora.step_parameters(0)[0].dtype)}
            for k in range(k_steps):
                _write_adapter(lora, k, comp, tmp / f"step{k}", attr)
            base_sd = {n.removeprefix(attr + "."): t for n, t in lora.base_state_dict().items()
                       if n.startswith(attr + ".")}
            info["dtypes"]["denoiser"] = _dtype_name(model.dtype)
            info["base"] = {"source": pretrained if comps == "reference" else ".",
                            "copied": comps == "full",
                            "fingerprint": student.base_fingerprint()}
            if comps == "full":
                clean = _clean_model(model, base_sd)
                _stock_pipeline(family, comp, clean, pipeline, pretrained).save_pretrained(
                    tmp, safe_serialization=True)
        else:
            nets = [getattr(student.step_denoiser(k), attr) for k in range(k_steps)]
            folders = [comp] * k_steps if student.parameterization == "shared" else \
                [comp] + [f"{comp}_step{k}" for k in range(1, k_steps)]
            info["step_subfolders"] = folders
            info["dtypes"]["denoiser"] = _dtype_name(nets[0].dtype)
            info["base"] = {"source": ".", "copied": True, "fingerprint": None}
            _stock_pipeline(family, comp, nets[0], pipeline, pretrained).save_pretrained(
                tmp, safe_serialization=True)
            for k in range(1, k_steps):
                if folders[k] != folders[0]:
                    nets[k].save_pretrained(tmp / folders[k], safe_serialization=True)
        info["dtypes"].setdefault("pipeline", info["dtypes"]["denoiser"])
        (tmp / INFO).write_text(json.dumps(info, indent=1, default=str), encoding="utf-8")
        net0 = getattr(den0, attr)  # self-describing files + card front matter (#23)
        card = describe_export(tmp, info, type(net0).__name__, dict(net0.config))
        (tmp / "README.md").write_text(card + model_card(info, str(out)), encoding="utf-8")
        _move_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _move_into_place(tmp: Path, out: Path) -> None:
    """Hand the finished folder ``tmp`` over as ``out`` (:func:`fewstep.utils.output_dirs.
    deliver`: into the running export's output session, which swaps it in atomically with its
    manifest; a foreign ``out`` is never replaced)."""
    from fewstep.utils.output_dirs import deliver

    deliver(tmp, out, "export")


def read_info(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """``fewstep_student.json`` of a diffusers-format export (``ValueError`` if it is not one
    this fewstep reads)."""
    path = Path(folder) / INFO
    info = json.loads(path.read_text(encoding="utf-8"))
    if info.get("format") != FORMAT:
        raise ValueError(f"{path}: not a {FORMAT} export (format={info.get('format')!r})")
    if info.get("family") not in (PIPELINE, UNET):
        raise ValueError(f"{path}: family {info.get('family')!r} was written by an older "
                         "fewstep; export the run again (fewstep export)")
    return info


__all__ = ["FORMAT", "INFO", "PIPELINE", "UNET", "export_family", "export_student",
           "network_attribute", "normalise_components", "read_info"]
