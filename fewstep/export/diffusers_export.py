"""Export a K-step student as a folder plain diffusers loads, and sample it with fewstep.

Students of diffusers teachers (``teacher.kind`` ``zimage`` / ``unet_eps`` / ``diffusers``) are
written in the diffusers format by :func:`export_student` (format
``fewstep-diffusers-student-v1``)::

    README.md                model card: teacher, recipe, steps, sigmas, metrics, loading snippet
    fewstep_student.json     every setting in machine-readable form (INFO below)
    model_index.json         a stock pipeline (ZImagePipeline / DDPMPipeline / the teacher's own
                             pipeline class for ``teacher.kind: diffusers``, e.g.
                             StableDiffusionPipeline, PixArtSigmaPipeline, FluxPipeline):
                             decoupled and shared students always, LoRA students with
                             components = full
    transformer/ | unet/     step 0's network (decoupled, shared) or the base (LoRA, full)
    transformer_step1/ ...   decoupled: one more folder per step (config.json + safetensors)
    step0/adapter.safetensors, step0/adapter_config.json, step1/...
                             LoRA: one adapter per step, diffusers / peft keys
                             (``transformer.<layer>.lora_A.weight``) with the peft config in
                             the ``lora_adapter_metadata`` header, loadable with
                             ``pipe.load_lora_weights(f"{folder}/step0",
                             weight_name="adapter.safetensors", adapter_name="step0")``
    vae/ text_encoder*/ tokenizer*/ scheduler/   (text-to-image teachers: copied from the
                             teacher pipeline, in the dtype they were trained with)

A LoRA student references its base (the teacher's ``pretrained`` hub id or folder) unless
``components = "full"`` copies it. Every tensor keeps its dtype. The README's snippet (see
:mod:`fewstep.export.model_card`) samples the student with diffusers alone;
:class:`StudentPipeline` does the same with fewstep's sampler (``fewstep sample --student``).

Family of an export (``fewstep_student.json`` ``family``): ``zimage`` (also a Z-Image pipeline
loaded through ``teacher.kind: diffusers``), ``unet_eps``, or ``diffusers`` (every other
pipeline of :data:`fewstep.teachers.diffusers.families.FAMILIES`; ``network`` then records the
denoiser class, the flow / VP path, the network's time input per step and the prediction type).

Students of other teachers (``teacher.kind: file`` / ``custom``) use fewstep's own folder format
(:mod:`fewstep.export.native`, ``student_index.json``), which needs fewstep.
"""

from __future__ import annotations

import inspect
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from fewstep.core.samplers import sample
from fewstep.export.metadata import describe_export, describe_native
from fewstep.export.model_card import model_card
from fewstep.export.native import (
    INDEX,
    ExportedStudent,
    read_student_folder,
    write_student_folder,
)
from fewstep.teachers.base import dtype_kwargs
from fewstep.teachers.diffusers.denoisers import (
    TIME_INPUTS,
    FlowPipelineDenoiser,
    VPPipelineDenoiser,
)
from fewstep.teachers.diffusers.families import FAMILIES as NETWORK_FAMILIES

Components = Literal["auto", "reference", "full", "copy"]
ZIMAGE_COMPONENTS = ("vae", "text_encoder", "tokenizer", "scheduler")


#: ``fewstep_student.json``: format, family, parameterization, transition, num_steps, sigmas,
#: component, step_subfolders (full) | lora {rank, alpha, targets, files, dtype}, base {source,
#: copied, fingerprint}, dtypes {pipeline, denoiser}, latent_shape, vae_factor, num_classes,
#: max_sequence_length, unet {timesteps, prediction_type, null_class, min_one_minus_sigma},
#: pipeline_class + network {class, path, timesteps, sign, mask_index, pooled_index,
#: prediction_type, min_one_minus_sigma, scheduler, guidance} (family ``diffusers``),
#: teacher, run {method, student, recipe}, metrics.
INFO = "fewstep_student.json"
FORMAT = "fewstep-diffusers-student-v1"
#: teacher kind -> the diffusers component its denoiser wraps (attribute and folder name)
FAMILIES = {"zimage": "transformer", "unet_eps": "unet"}
#: ``teacher.kind: diffusers`` (any pipeline of the family table) exports as family ``diffusers``
GENERIC = "diffusers"


def export_family(teacher_config: dict[str, Any]) -> str | None:
    """The export family of a teacher config (``zimage`` / ``unet_eps`` / ``diffusers``), or
    ``None`` for teachers without a diffusers counterpart (fewstep's own format)."""
    kind = teacher_config.get("kind")
    if kind in FAMILIES:
        return str(kind)
    if kind == GENERIC:
        net = teacher_config.get("family")
        if net == "ZImageTransformer2DModel":  # the same network and snippet as kind zimage
            return "zimage"
        if net not in NETWORK_FAMILIES:
            raise ValueError(f"teacher.family: no diffusers export for denoiser {net!r} "
                             f"(known: {', '.join(sorted(NETWORK_FAMILIES))})")
        return GENERIC
    return None


def component_name(teacher_config: dict[str, Any], pipeline: Any = None) -> str:
    """The pipeline attribute / folder of the denoiser: ``transformer`` or ``unet``."""
    family = export_family(teacher_config)
    if family in FAMILIES:
        return FAMILIES[family]  # type: ignore[index]
    if pipeline is not None:
        return "unet" if isinstance(getattr(pipeline, "unet", None), nn.Module) else "transformer"
    return "unet" if str(teacher_config.get("family", "")).startswith("UNet") else "transformer"


def network_attribute(denoiser: nn.Module) -> str:
    """Name of the child of a fewstep denoiser that is its diffusers network (``transformer``
    for Z-Image, ``unet`` for VP wrappers, ``net`` for flow wrappers)."""
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
        pipeline: the teacher's diffusers pipeline (Z-Image: VAE, text encoder, tokenizer and
            scheduler are copied from it).
        components: ``reference`` (LoRA: the base stays at the teacher's ``pretrained``),
            ``full`` (copy everything; ``copy`` is an alias) or ``auto`` (LoRA: reference,
            others: full). Decoupled / shared students are always complete pipelines.
        num_classes / latent_shape: what the sampler draws (labels ``i % C``; noise shape).
        run / metrics: the run's config (``method``, ``student``, recipe sections) and metrics
            for the model card.

    The folder is written next to its destination and moved into place at the end.
    """
    kind = teacher_config.get("kind", "file")
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
    info = {"pipeline": kind, "transition": student.transition,
            "teacher": {key: v for key, v in teacher_config.items() if key != "builder"},
            "components": "none", "latent_shape": shape, "num_classes": int(num_classes),
            "max_sequence_length": teacher_config.get("max_sequence_length"), **(extra or {})}
    out = write_student_folder(Path(folder), steps, student.sigmas.detach().cpu(), builder,
                               extra=info)
    describe_native(out)  # self-describing files (#23)
    return out


def normalise_components(components: str, lora: bool) -> str:
    """``auto`` / ``copy`` / ``full`` / ``reference`` -> ``full`` | ``reference``."""
    c = {"copy": "full", "auto": "reference" if lora else "full"}.get(components, components)
    if c not in ("full", "reference"):
        raise ValueError(f"components must be auto|reference|full, got {components!r}")
    return c if lora else "full"


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _clean_model(model: nn.Module, state: dict[str, Tensor]) -> nn.Module:
    """A fresh diffusers model of ``model``'s class and config holding ``state`` (no LoRA
    layers), built on the meta device so no extra copy of the weights is made."""
    cls = type(model)
    try:
        with torch.device("meta"):
            clean = cls.from_config(dict(model.config))
        clean.load_state_dict(state, strict=True, assign=True)
    except (RuntimeError, NotImplementedError):
        clean = cls.from_config(dict(model.config)).to(next(iter(state.values())).dtype)
        clean.load_state_dict(state, strict=True)
    return clean


def _stock_pipeline(kind: str, net: nn.Module, pipeline: Any, pretrained: str | None,
                    comp: str = "transformer") -> Any:
    from diffusers import DDPMPipeline, DDPMScheduler, ZImagePipeline

    if kind == GENERIC:  # the teacher's own pipeline class, its denoiser replaced
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
    if kind == "zimage":
        if pipeline is None:
            raise ValueError("exporting a complete Z-Image pipeline needs the teacher pipeline")
        return ZImagePipeline(scheduler=pipeline.scheduler, vae=pipeline.vae,
                              text_encoder=pipeline.text_encoder, tokenizer=pipeline.tokenizer,
                              transformer=net)
    if pretrained is None:
        raise ValueError("exporting a unet_eps student needs teacher.pretrained (its scheduler)")
    return DDPMPipeline(unet=net, scheduler=DDPMScheduler.from_pretrained(
        pretrained, subfolder="scheduler"))


def _write_adapter(lora: Any, k: int, comp: str, out: Path, attr: str | None = None) -> None:
    """Step ``k``'s adapter as ``out/adapter.safetensors`` (keys ``<comp>.<layer>.lora_A.weight``,
    the denoiser's own ``attr.`` prefix replaced by the pipeline component ``comp``) and
    ``out/adapter_config.json`` (peft ``LoraConfig`` kwargs, targets relative to the network)."""
    attr = comp if attr is None else attr
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


def _network_info(den0: nn.Module, sigmas: Tensor, pipeline: Any) -> dict[str, Any]:
    """``network`` of a family-``diffusers`` export: what the snippet needs to call the network
    as fewstep does (time input per step, sign, prediction type; see ``fewstep_student.json``)."""
    attr = network_attribute(den0)
    net = getattr(den0, attr)
    cls = type(net).__name__
    fam = NETWORK_FAMILIES[cls]
    out: dict[str, Any] = {"class": cls, "sign": fam.sign, "mask_index": fam.mask_index,
                           "pooled_index": fam.pooled_index}
    if isinstance(den0, FlowPipelineDenoiser):
        out.update(path="flow", time=fam.time,
                   timesteps=[float(t) for t in TIME_INPUTS[fam.time](sigmas).tolist()])
    elif isinstance(den0, VPPipelineDenoiser):
        out.update(path="vp", timesteps=[float(t) for t in den0.timestep(sigmas).tolist()],
                   prediction_type=den0.prediction_type,
                   min_one_minus_sigma=float(den0.min_one_minus_sigma),
                   scheduler=type(getattr(pipeline, "scheduler", None)).__name__
                   if pipeline is not None else None)
    else:
        raise ValueError(f"no diffusers export for a {type(den0).__name__} student")
    if getattr(net.config, "guidance_embeds", False):  # guidance-distilled Flux
        out["guidance"] = float(getattr(net, "fewstep_guidance", 3.5))
    return out


def _export_diffusers(student: Any, out: Path, tcfg: dict[str, Any], kind: str, pipeline: Any,
                      components: str, num_classes: int, shape: list[int], run: dict[str, Any],
                      metrics: dict[str, Any]) -> Path:
    comp = component_name(tcfg, pipeline)
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
    sigmas = student.sigmas.detach().cpu().float()
    info: dict[str, Any] = {
        "format": FORMAT, "family": kind, "parameterization": student.parameterization,
        "transition": student.transition, "num_steps": k_steps,
        "sigmas": [float(x) for x in sigmas.tolist()],
        "component": comp, "latent_shape": shape, "num_classes": int(num_classes),
        "max_sequence_length": tcfg.get("max_sequence_length"),
        "teacher": {key: v for key, v in tcfg.items() if key != "builder"},
        "run": run, "metrics": metrics,
    }
    if kind in ("zimage", GENERIC):
        vae = getattr(pipeline, "vae", None)
        info["vae_factor"] = (2 ** (len(vae.config.block_out_channels) - 1) if vae is not None
                              else int(tcfg["resolution"]) // int(shape[-1]))
        pdt = next(vae.parameters()).dtype if vae is not None else None
        info["dtypes"] = {"pipeline": _dtype_name(pdt) if pdt else tcfg.get("dtype", "float32")}
        if kind == GENERIC:
            info["pipeline_class"] = (type(pipeline).__name__ if pipeline is not None
                                      else tcfg.get("pipeline_class"))
            info["network"] = _network_info(den0, sigmas, pipeline)
    else:
        info["dtypes"] = {}
        info["unet"] = {"timesteps": [float(t) for t in den0.timestep(sigmas).tolist()],
                        "prediction_type": den0.prediction_type, "null_class": den0.null_class,
                        "min_one_minus_sigma": float(den0.min_one_minus_sigma)}
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
                _stock_pipeline(kind, clean, pipeline, pretrained, comp).save_pretrained(
                    tmp, safe_serialization=True)
        else:
            nets = [getattr(student.step_denoiser(k), attr) for k in range(k_steps)]
            folders = [comp] * k_steps if student.parameterization == "shared" else \
                [comp] + [f"{comp}_step{k}" for k in range(1, k_steps)]
            info["step_subfolders"] = folders
            info["dtypes"]["denoiser"] = _dtype_name(nets[0].dtype)
            info["base"] = {"source": ".", "copied": True, "fingerprint": None}
            _stock_pipeline(kind, nets[0], pipeline, pretrained, comp).save_pretrained(
                tmp, safe_serialization=True)
            for k in range(1, k_steps):
                if folders[k] != folders[0]:
                    nets[k].save_pretrained(tmp / folders[k], safe_serialization=True)
        if "pipeline" not in info["dtypes"]:
            info["dtypes"]["pipeline"] = info["dtypes"]["denoiser"]
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
    """``fewstep_student.json`` of a diffusers-format export (``ValueError`` if it is not)."""
    path = Path(folder) / INFO
    info = json.loads(path.read_text(encoding="utf-8"))
    if info.get("format") != FORMAT:
        raise ValueError(f"{path}: not a {FORMAT} export (format={info.get('format')!r})")
    return info


def _torch_dtype(name: str) -> torch.dtype:
    dt = getattr(torch, name, None)
    if not isinstance(dt, torch.dtype):
        raise ValueError(f"unknown dtype {name!r}")
    return dt


def _scheduler_alphas(src: str) -> Tensor:
    """``alphas_cumprod`` of the scheduler saved under ``src/scheduler`` (any diffusers VP
    scheduler class named in its config)."""
    import diffusers

    cfg = diffusers.DDPMScheduler.load_config(src, subfolder="scheduler")  # any class's config
    cls = getattr(diffusers, str(cfg.get("_class_name", "DDPMScheduler")), None)
    if not (isinstance(cls, type) and issubclass(cls, diffusers.SchedulerMixin)):
        raise ValueError(f"{src}/scheduler: unknown scheduler class {cfg.get('_class_name')!r}")
    alphas = getattr(cls.from_config(cfg), "alphas_cumprod", None)
    if alphas is None:
        raise ValueError(f"{src}/scheduler: {cls.__name__} has no alphas_cumprod (not VP)")
    return alphas


def _network_class(info: dict[str, Any]) -> type:
    """The diffusers model class of an export's denoiser (checked against the family table)."""
    import diffusers

    if info["family"] == "zimage":
        return diffusers.ZImageTransformer2DModel
    if info["family"] == "unet_eps":
        return diffusers.UNet2DModel
    name = info["network"]["class"]
    if name not in NETWORK_FAMILIES:
        raise ValueError(f"{INFO}: unknown denoiser class {name!r}")
    return getattr(diffusers, name)


def load_diffusers_student(folder: str | os.PathLike[str], device: torch.device | str = "cpu",
                           dtype: torch.dtype | None = None) -> ExportedStudent:
    """Rebuild the student of a diffusers-format export as fewstep denoisers (eval mode).
    ``dtype`` casts the networks (default: as saved)."""
    from fewstep.student.lora import PerStepLoRA
    from fewstep.teachers.diffusers.vp import VPEpsilonDenoiser
    from fewstep.teachers.diffusers.zimage import ZImageDenoiser

    root = Path(folder)
    info = read_info(root)
    family, comp = info["family"], info["component"]
    model_cls = _network_class(info)
    den_dtype = _torch_dtype(info["dtypes"]["denoiser"])
    src = str(root) if info["base"]["copied"] else str(info["base"]["source"])

    def wrap(model: nn.Module) -> nn.Module:
        if family == "zimage":
            return ZImageDenoiser(model)
        if family == "unet_eps":
            u = info["unet"]
            return VPEpsilonDenoiser(model, _scheduler_alphas(src), u["prediction_type"],
                                     u["null_class"], u["min_one_minus_sigma"])
        net = info["network"]
        if "guidance" in net:
            model.fewstep_guidance = net["guidance"]
        if net["path"] == "flow":
            return FlowPipelineDenoiser(model, net["class"])
        return VPPipelineDenoiser(model, _scheduler_alphas(src), net["class"],
                                  net["prediction_type"],
                                  min_one_minus_sigma=net["min_one_minus_sigma"])

    def load(where: str, sub: str) -> nn.Module:
        return model_cls.from_pretrained(where, subfolder=sub, use_safetensors=True,
                                         **_dtype_kwargs(den_dtype))

    sigmas = torch.tensor(info["sigmas"], dtype=torch.float32)
    index = {"format": FORMAT, "extra": info}
    if info["parameterization"] == "lora":
        cfg = info["lora"]
        base = wrap(load(src, comp))
        attr = network_attribute(base)
        lora = PerStepLoRA(base, info["num_steps"], rank=cfg["rank"], alpha=cfg["alpha"],
                           target_modules=[f"re:{re.escape(attr + '.' + t)}"
                                           for t in cfg["targets"]])
        for k, name in enumerate(cfg["files"]):
            sd = load_file(str(root / name))
            lora.load_adapter_state_dict(k, {attr + n.removeprefix(comp): t
                                             for n, t in sd.items()})
        lora.to(device=device, dtype=dtype).eval()
        return ExportedStudent(sigmas=sigmas, lora=lora, index=index)
    nets: dict[str, nn.Module] = {}
    for sub in info["step_subfolders"]:
        if sub not in nets:
            nets[sub] = wrap(load(str(root), sub)).to(device=device, dtype=dtype).eval()
    return ExportedStudent(sigmas=sigmas, steps=[nets[s] for s in info["step_subfolders"]],
                         index=index)


def step0_network(student: ExportedStudent) -> nn.Module:
    """The diffusers network of step 0 (a LoRA student: the base, adapters inserted)."""
    den = student.lora.base if student.lora is not None else student.steps[0]
    return getattr(den, network_attribute(den))


def load_text_pipeline(info: dict[str, Any], src: str, network: nn.Module,
                       device: torch.device | str) -> Any:
    """The teacher's pipeline class from ``src`` (VAE, text encoders, tokenizers, scheduler in
    their saved dtype) holding ``network`` as its denoiser (not loaded again)."""
    import diffusers

    cls = getattr(diffusers, str(info.get("pipeline_class")), None)
    if not (isinstance(cls, type) and issubclass(cls, diffusers.DiffusionPipeline)):
        raise ValueError(f"{INFO}: unknown pipeline class {info.get('pipeline_class')!r}")
    pipe = cls.from_pretrained(src, use_safetensors=True, **{info["component"]: network},
                               **_dtype_kwargs(_torch_dtype(info["dtypes"]["pipeline"])))
    pipe.set_progress_bar_config(disable=True)
    for m in pipe.components.values():
        if isinstance(m, nn.Module) and m is not network:
            m.to(device).eval().requires_grad_(False)
    return pipe


def _dtype_kwargs(dtype: torch.dtype | None) -> dict[str, Any]:
    """``dtype=`` (newer diffusers) or ``torch_dtype=`` (older); nothing for ``None``."""
    return {} if dtype is None else dtype_kwargs(dtype)


def load_zimage_text_pipeline(src: str, dtype: torch.dtype | None,
                              device: torch.device | str) -> Any:
    """A transformer-less ``ZImagePipeline`` (VAE, text encoder, tokenizer, scheduler) from
    ``src``; ``dtype=None`` keeps the dtype the weights were saved in."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, ZImagePipeline
    from transformers import AutoModel, AutoTokenizer

    if dtype is None:  # the saved dtype (diffusers would otherwise load float32)
        from fewstep.export.native import _file_float_dtype

        files = sorted((Path(src) / "vae").glob("*.safetensors"))
        dtype = _file_float_dtype(str(files[0])) if files else None
    vae = AutoencoderKL.from_pretrained(src, subfolder="vae", use_safetensors=True,
                                        **_dtype_kwargs(dtype)).to(device)
    text_encoder = AutoModel.from_pretrained(src, subfolder="text_encoder",
                                             trust_remote_code=False,
                                             **({"dtype": dtype} if dtype else {})).to(device)
    tokenizer = AutoTokenizer.from_pretrained(src, subfolder="tokenizer",
                                              trust_remote_code=False)
    sched = FlowMatchEulerDiscreteScheduler.from_pretrained(src, subfolder="scheduler")
    vae.eval().requires_grad_(False)
    text_encoder.eval().requires_grad_(False)
    return ZImagePipeline(scheduler=sched, vae=vae, text_encoder=text_encoder,
                          tokenizer=tokenizer, transformer=None)


class StudentPipeline:
    """Sample an exported student (see module docstring). Build with :meth:`from_pretrained`.

    Attributes:
        student: the reloaded steps; ``index``: ``student_index.json``; ``vae`` /
            ``text_pipe``: Z-Image decoder and prompt encoder (``None`` in pixel space).
    """

    def __init__(self, student: ExportedStudent, vae: nn.Module | None = None,
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
        if (root / INFO).is_file():
            st = load_diffusers_student(root, device=device, dtype=dtype)
            info = st.index["extra"]
            text_pipe = None
            src = str(root) if (root / "vae").is_dir() else str(info["base"]["source"])
            if info["family"] == "zimage":
                text_pipe = load_zimage_text_pipeline(src, _torch_dtype(info["dtypes"]["pipeline"]),
                                                      device)
            elif info["family"] == GENERIC:
                text_pipe = load_text_pipeline(info, src, step0_network(st), device)
            return cls(st, getattr(text_pipe, "vae", None), text_pipe, device)
        if not (root / INDEX).is_file():
            raise FileNotFoundError(f"{root} is not an exported student ({INFO} / {INDEX} "
                                    "missing)")
        st = read_student_folder(root, device=device, dtype=dtype)
        extra = st.index.get("extra", {})
        text_pipe = None
        if extra.get("pipeline") == "zimage":  # an export of an older fewstep
            copied = extra.get("components") == "copy"
            src = str(root) if copied else extra["teacher"]["pretrained"]
            tdtype = extra.get("teacher", {}).get("dtype")
            text_pipe = load_zimage_text_pipeline(
                src, None if copied or not tdtype else _torch_dtype(tdtype), device)
        return cls(st, getattr(text_pipe, "vae", None), text_pipe, device)

    # -- conditioning --------------------------------------------------------------------------
    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> Any:
        """Prompts -> :class:`~fewstep.teachers.diffusers.zimage.PromptEmbeds` (one row each)."""
        from fewstep.teachers.diffusers.prompt_cache import pipeline_encode_fn
        from fewstep.teachers.diffusers.zimage import PromptEmbeds

        if self.text_pipe is None:
            raise ValueError("this student takes no prompts (it is not a text-to-image student)")
        net = self.extra.get("network") or {}
        enc = pipeline_encode_fn(self.text_pipe, self.extra.get("max_sequence_length"),
                                 self.device, net.get("mask_index"), net.get("pooled_index"))
        rows = enc(list(prompts))
        if rows and isinstance(rows[0], tuple):  # (tokens, pooled) per prompt
            return PromptEmbeds.from_list([r[0] for r in rows], [r[1] for r in rows])
        return PromptEmbeds.from_list(rows)

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
        from fewstep.teachers.diffusers.latents import decode

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


__all__ = ["FAMILIES", "FORMAT", "GENERIC", "INFO", "ZIMAGE_COMPONENTS", "StudentPipeline",
           "component_name", "export_family", "export_student", "load_diffusers_student",
           "load_text_pipeline", "load_zimage_text_pipeline", "network_attribute",
           "normalise_components", "read_info", "step0_network"]
