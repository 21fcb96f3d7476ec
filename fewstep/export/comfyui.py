"""``fewstep export --format comfyui``: a LoRA student as per-step LoRA files ComfyUI and
kohya-style tools load, plus a ComfyUI workflow that samples it.

Folder (written next to its destination and moved into place at the end)::

    README.md                              front matter, what each file is, how to use them
    <name>_step1of2.safetensors, ...       step k's LoRA in the network's ComfyUI / kohya key
                                           format (:mod:`fewstep.export.comfyui_keys`), with
                                           ModelSpec + fewstep sampler settings in the header
                                           (:mod:`fewstep.export.metadata`)
    workflow_api.json                      the K-step graph (:mod:`fewstep.export.comfyui_workflow`;
                                           flow-matching families only)

Only LoRA students (``student.parameterization: lora``) have per-step LoRA files; decoupled
and shared students export in the diffusers format.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from safetensors.torch import save_file
from torch import nn

from fewstep.export.comfyui_keys import comfy_lora_tensors, flux_widths_of, key_format_for
from fewstep.export.comfyui_nodes import check_workflow
from fewstep.export.comfyui_workflow import student_workflow, workflow_problem
from fewstep.export.diffusers_export import network_attribute
from fewstep.export.metadata import (
    SamplerSettings,
    architecture_of,
    file_header,
    front_matter,
    stamp_safetensors,
    teacher_license,
)

WORKFLOW = "workflow_api.json"
DEFAULT_PROMPT = "a photo of a cat"


def student_network(student: Any) -> tuple[str, nn.Module]:
    """``(attribute, diffusers network)`` of a LoRA student's base (``ValueError`` for other
    students or networks)."""
    if getattr(student, "lora", None) is None:
        raise ValueError("--format comfyui needs a LoRA student (student.parameterization: "
                         f"lora); a {student.parameterization} student exports in the diffusers "
                         "format (--format diffusers)")
    den = student.lora.base
    attr = network_attribute(den)
    bad = [t for t in student.lora.targets if not t.startswith(attr + ".")]
    if bad:
        raise ValueError(f"LoRA target {bad[0]!r} lies outside the diffusers network; it has no "
                         "ComfyUI key")
    return attr, getattr(den, attr)


def check_comfyui(student: Any, key_format: str | None = None) -> None:
    """``ValueError`` naming why ``student`` has no ComfyUI export (before anything is
    written)."""
    _, net = student_network(student)
    key_format_for(type(net).__name__, key_format)


def sampler_settings(student: Any, teacher_config: dict[str, Any], net: nn.Module,
                     recipe: str | None = None) -> SamplerSettings:
    """The settings every exported file records (see :mod:`fewstep.export.metadata`)."""
    sampling = teacher_config.get("sampling") or {}
    guided = bool(getattr(net.config, "guidance_embeds", False))
    return SamplerSettings(
        sigmas=tuple(float(s) for s in student.sigmas.tolist()),
        transition=student.transition,
        base_model=str(teacher_config.get("pretrained") or teacher_config.get("kind", "?")),
        guidance=float(getattr(net, "fewstep_guidance", 3.5)) if guided else None,
        teacher_guidance=sampling.get("cfg_scale"), shift=sampling.get("shift"),
        base_fingerprint=student.base_fingerprint(), recipe=recipe,
        license=teacher_license(teacher_config.get("pretrained")))


def file_stem(base_model: str, num_steps: int) -> str:
    """``<base name>_fewstep<K>`` with only file-name-safe characters."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(base_model.rstrip("/")).name) or "student"
    return f"{name}_fewstep{num_steps}"


def export_comfyui(student: Any, folder: str | os.PathLike[str], teacher_config: dict[str, Any],
                   key_format: str | None = None, prompt: str = DEFAULT_PROMPT, seed: int = 0,
                   recipe: str | None = None) -> Path:
    """Write the folder of the module docstring for a LoRA ``student``; returns it.

    ``key_format``: ``kohya`` / ``diffusion_model`` / ``transformer`` (default: the network's,
    see :data:`fewstep.export.comfyui_keys.COMFY_FORMATS`); ``prompt`` / ``seed``: the
    workflow's. ``ValueError`` names what cannot be exported."""
    attr, net = student_network(student)
    net_class = type(net).__name__
    fmt = key_format_for(net_class, key_format)
    settings = sampler_settings(student, teacher_config, net, recipe)
    config: Any = net.config  # diffusers' FrozenDict (nn.Module.__getattr__ types it a Tensor)
    arch = architecture_of(net_class, dict(config), teacher_config.get("resolution"))
    lora, k_steps = student.lora, student.num_steps
    stem = file_stem(settings.base_model, k_steps)
    files = [f"{stem}_step{k + 1}of{k_steps}.safetensors" for k in range(k_steps)]
    widths = flux_widths_of(net) if net_class == "FluxTransformer2DModel" else None
    out = Path(folder).expanduser().resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        for k, name in enumerate(files):
            adapter = {n.removeprefix(attr + "."): t.detach().cpu()
                       for n, t in lora.adapter_state_dict(k).items()}
            tensors = comfy_lora_tensors(net_class, adapter, lora.alpha, fmt, widths)
            save_file(tensors, str(tmp / name), metadata={"format": "pt"})
            header = file_header(arch, settings, f"{Path(settings.base_model).name} "
                                 f"{k_steps}-step (fewstep)", k, (lora.rank, lora.alpha))
            stamp_safetensors(tmp / name, {**header, "fewstep.key_format": fmt})
        problem = workflow_problem(net_class, k_steps, student.transition)
        if problem is None:
            res = int(teacher_config.get("resolution") or arch.resolution or 1024)
            graph = student_workflow(net_class, files, settings.sigmas, student.transition,
                                     prompt=prompt, width=res, height=res, seed=seed,
                                     shift=settings.shift, guidance=settings.guidance)
            errs = check_workflow(graph)
            if errs:  # a bug in fewstep's graph, never the user's
                raise RuntimeError(f"the ComfyUI workflow is invalid: {errs[:3]}")
            (tmp / WORKFLOW).write_text(json.dumps(graph, indent=1), encoding="utf-8")
        readme = front_matter(settings.base_model, arch, k_steps, True, settings.license) + \
            comfyui_readme(settings, files, fmt, problem)
        (tmp / "README.md").write_text(readme, encoding="utf-8")
        _replace_folder(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def comfyui_readme(s: SamplerSettings, files: list[str], fmt: str, no_workflow: str | None
                   ) -> str:
    """The body of the folder's ``README.md``."""
    k = s.num_steps
    lines = [f"# {k}-step student of {s.base_model} (fewstep), ComfyUI / kohya LoRA files", "",
             f"One LoRA per student step (key format `{fmt}`); step k must run with its own "
             "file only:", "", "| step | input noise level (1 = noise) | file |", "|---|---|---|"]
    lines += [f"| {i + 1} | {sig:g} | `{f}` |" for i, (sig, f) in enumerate(zip(s.sigmas, files,
                                                                               strict=True))]
    lines += ["", f"Transition between steps: `{s.transition}`; LoRA strength "
              f"{s.lora_scale:g}; no CFG" + (f"; Flux guidance {s.guidance:g}" if s.guidance
                                             is not None else "")
              + (f"; teacher shift {s.shift:g}" if s.shift is not None else "") + ".", ""]
    if no_workflow:
        lines += [f"No ComfyUI workflow: {no_workflow}.", ""]
    else:
        lines += [f"`{WORKFLOW}` runs the {k} steps in ComfyUI: copy the LoRA files to "
                  "`models/loras`, set the base model, text encoder and VAE file names in the "
                  "loader nodes to yours, and load the file in ComfyUI (or POST it to "
                  "`/prompt`).", ""]
    lines += ["Every file's safetensors header holds these settings (`modelspec.*`, "
              "`fewstep.*`)."]
    return "\n".join(lines) + "\n"


def _replace_folder(tmp: Path, out: Path) -> None:
    """``out`` becomes ``tmp`` (an old ``out`` is moved aside first, then removed)."""
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


__all__ = ["WORKFLOW", "check_comfyui", "export_comfyui", "file_stem", "sampler_settings",
           "student_network"]
