"""Exported files that describe themselves: safetensors headers and model card front matter.

Every safetensors file of a student that fewstep exports (per-step adapters, per-step
networks, ComfyUI LoRA files, fewstep's own format) gets, in its ``__metadata__`` (all values
strings; existing keys such as diffusers' ``lora_adapter_metadata`` are kept):

* ModelSpec (Stability-AI/ModelSpec, version 1.0.1 as kohya's sd-scripts writes it):
  ``modelspec.sai_model_spec``, ``.architecture`` (``<base>/lora`` for adapters),
  ``.implementation``, ``.title``, ``.description``, ``.date``, ``.resolution``,
  ``.usage_hint``, ``.hash_sha256`` (``0x`` + sha256 of the file's tensor data: everything
  after the header), ``.license`` and ``.prediction_type`` where known;
* kohya's ``ss_network_module`` / ``ss_network_dim`` / ``ss_network_alpha`` for LoRAs and
  ``ss_base_model_version`` where sd-scripts defines one (``sd_v1``, ``sdxl_base_v1-0``,
  ``flux1``): what LoRA managers classify files by;
* fewstep's sampler settings, ``fewstep.*``: ``format``, ``step`` (0-based) / ``num_steps``,
  ``sigmas`` (the K input levels, 1 = noise), ``transition``, ``guidance`` (the embedded
  guidance a guidance-distilled network is called with, else null: students sample without
  CFG), ``teacher_guidance`` (the teacher's CFG ``w``), ``shift``, ``lora_scale``, ``base_model``
  (hub id or folder) and ``base_fingerprint`` (fewstep's weights fingerprint of the frozen base).

:func:`front_matter` writes the model card's YAML header (``huggingface_hub.ModelCardData``:
``base_model``, ``base_model_relation``, ``library_name: diffusers``, ``pipeline_tag``,
``tags``, ``license`` read from the teacher's own card, offline; ``other`` when unknown).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fewstep.utils.files import atomic_write_bytes

MODELSPEC_VERSION = "1.0.1"
FORMAT = "fewstep-student-file-v1"
_STABILITY = "https://github.com/Stability-AI/generative-models"
_BFL = "https://github.com/black-forest-labs/flux"
#: files up to this size are re-headered in memory, larger ones through a temporary file
IN_MEMORY_BYTES = 256 * 2**20


@dataclass(frozen=True)
class Architecture:
    """ModelSpec / kohya identity of a base model. ``modelspec`` and ``ss_base_model_version``
    are sd-scripts' strings where it has one (``ss`` empty: sd-scripts defines none), fewstep's
    lower-case model name otherwise; ``tag``: the model card tag."""

    modelspec: str
    implementation: str
    ss: str
    resolution: int
    tag: str
    prediction_type: str | None = None


def architecture_of(net_class: str | None, net_config: Mapping[str, Any] | None = None,
                    resolution: int | None = None) -> Architecture:
    """The :class:`Architecture` of a diffusers denoiser class and config."""
    c = dict(net_config or {})
    if net_class == "UNet2DConditionModel":
        if c.get("cross_attention_dim") == 2048 or c.get("addition_embed_type") == "text_time":
            a = Architecture("stable-diffusion-xl-v1-base", _STABILITY, "sdxl_base_v1-0", 1024,
                             "stable-diffusion-xl", "epsilon")
        else:
            a = Architecture("stable-diffusion-v1", "diffusers", "sd_v1", 512,
                             "stable-diffusion", "epsilon")
    elif net_class == "FluxTransformer2DModel":
        dev = bool(c.get("guidance_embeds", False))
        a = Architecture("flux-1-dev" if dev else "flux-1-schnell", _BFL, "flux1", 1024, "flux")
    elif net_class == "SD3Transformer2DModel":
        size = "large" if int(c.get("num_layers", 0)) >= 38 else "medium"
        a = Architecture(f"stable-diffusion-3-5-{size}", "diffusers", "", 1024,
                         "stable-diffusion-3")
    else:
        names = {"ZImageTransformer2DModel": ("z-image", 1024),
                 "QwenImageTransformer2DModel": ("qwen-image", 1328),
                 "PixArtTransformer2DModel": ("pixart-sigma", 1024),
                 "SanaTransformer2DModel": ("sana", 1024)}
        name, res = names.get(str(net_class), (f"fewstep-{net_class or 'network'}".lower(), 0))
        a = Architecture(name, "diffusers" if net_class else "fewstep", "", res, name)
    if resolution:
        a = Architecture(a.modelspec, a.implementation, a.ss, int(resolution), a.tag,
                         a.prediction_type)
    return a


@dataclass(frozen=True)
class SamplerSettings:
    """What a file needs to be sampled as the student was trained (see module docstring)."""

    sigmas: tuple[float, ...]
    transition: str
    base_model: str
    guidance: float | None = None
    teacher_guidance: float | None = None
    shift: float | None = None
    lora_scale: float = 1.0
    base_fingerprint: str | None = None
    recipe: str | None = None
    license: str | None = None

    @property
    def num_steps(self) -> int:
        return len(self.sigmas)


def sampler_header(s: SamplerSettings, step: int | None) -> dict[str, str]:
    """The ``fewstep.*`` keys (``step``: the file's step, ``None`` for a file of all steps)."""
    out = {"fewstep.format": FORMAT, "fewstep.num_steps": str(s.num_steps),
           "fewstep.sigmas": json.dumps([float(x) for x in s.sigmas]),
           "fewstep.transition": s.transition, "fewstep.guidance": json.dumps(s.guidance),
           "fewstep.teacher_guidance": json.dumps(s.teacher_guidance),
           "fewstep.shift": json.dumps(s.shift), "fewstep.lora_scale": f"{s.lora_scale:g}",
           "fewstep.base_model": s.base_model,
           "fewstep.base_fingerprint": s.base_fingerprint or ""}
    if step is not None:
        out["fewstep.step"] = str(step)
    return out


def file_header(arch: Architecture, s: SamplerSettings, title: str, step: int | None,
                lora: tuple[int, float] | None = None) -> dict[str, str]:
    """ModelSpec + kohya + ``fewstep.*`` keys of one exported file (without the hash, which
    :func:`stamp_safetensors` adds). ``lora = (rank, alpha)`` for an adapter file."""
    k = s.num_steps
    which = f"step {step + 1} of {k}" if step is not None else f"all {k} steps"
    use = (f"apply it only for the step at noise level {s.sigmas[step]:g}; the other steps use "
           "their own files" if step is not None else "each step uses its own weights")
    meta = {
        "modelspec.sai_model_spec": MODELSPEC_VERSION,
        "modelspec.architecture": arch.modelspec + ("/lora" if lora else ""),
        "modelspec.implementation": arch.implementation,
        "modelspec.title": f"{title} ({which})",
        "modelspec.description": f"fewstep {k}-step student ({s.recipe or 'distilled'}) of "
                                 f"{s.base_model}, {'LoRA' if lora else 'weights'} of {which}: "
                                 f"{use}.",
        "modelspec.date": _dt.date.today().isoformat(),
        "modelspec.usage_hint": f"{k} steps at sigmas {[round(x, 6) for x in s.sigmas]} (1 = "
                                f"noise), transition {s.transition}, LoRA strength "
                                f"{s.lora_scale:g}, no CFG"
                                + (f", guidance {s.guidance:g}" if s.guidance is not None
                                   else ""),
        **sampler_header(s, step),
    }
    if arch.resolution:
        meta["modelspec.resolution"] = f"{arch.resolution}x{arch.resolution}"
    if arch.prediction_type:
        meta["modelspec.prediction_type"] = arch.prediction_type
    if s.license:
        meta["modelspec.license"] = s.license
    if lora:
        meta.update({"ss_network_module": "networks.lora", "ss_network_dim": str(lora[0]),
                     "ss_network_alpha": f"{lora[1]:g}"})
    if arch.ss:
        meta["ss_base_model_version"] = arch.ss
    return meta


def _read_header(f: Any) -> tuple[int, dict[str, Any]]:
    raw = f.read(8)
    if len(raw) != 8:
        raise ValueError("not a safetensors file (shorter than 8 bytes)")
    (n,) = struct.unpack("<Q", raw)
    if n > 100 * 2**20:
        raise ValueError(f"not a safetensors file (header of {n} bytes)")
    return n, json.loads(f.read(n))


def data_sha256(path: str | os.PathLike[str]) -> str:
    """``0x`` + sha256 of a safetensors file's tensor data (everything after the header; the
    metadata does not change it), streamed."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        _read_header(f)
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return "0x" + h.hexdigest()


def read_header(path: str | os.PathLike[str]) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors file."""
    with open(path, "rb") as f:
        return dict(_read_header(f)[1].get("__metadata__") or {})


def stamp_safetensors(path: str | os.PathLike[str], metadata: Mapping[str, str]) -> None:
    """Add ``metadata`` and ``modelspec.hash_sha256`` to the header of the safetensors file
    ``path`` (existing keys kept unless overwritten). The tensor data are copied unchanged
    (offsets are relative to the data section); the header is padded to 8 bytes as
    safetensors writes it. Small files are rewritten atomically in memory, large ones through
    a temporary file in the same folder."""
    path = Path(path)
    bad = [k for k, v in metadata.items() if not isinstance(v, str)]
    if bad:
        raise TypeError(f"safetensors metadata values must be strings: {bad}")
    meta = {**read_header(path), **metadata, "modelspec.hash_sha256": data_sha256(path)}
    with open(path, "rb") as f:
        n, header = _read_header(f)
        header["__metadata__"] = meta
        blob = json.dumps(header, separators=(",", ":")).encode("utf-8")
        blob += b" " * (-len(blob) % 8)
        head = struct.pack("<Q", len(blob)) + blob
        size = path.stat().st_size - 8 - n
        if size <= IN_MEMORY_BYTES:
            atomic_write_bytes(path, head + f.read())
            return
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            with open(tmp, "wb") as out:
                out.write(head)
                for chunk in iter(lambda: f.read(1 << 24), b""):
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)


def teacher_license(pretrained: str | None) -> str | None:
    """``license`` of the teacher's model card, read offline: a local folder's ``README.md``,
    or a hub id's card in the local Hugging Face cache; ``None`` when there is none."""
    if not pretrained:
        return None
    readme = Path(pretrained).expanduser() / "README.md"
    if not readme.is_file():
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(pretrained, "README.md")
        except Exception:  # not a repo id (e.g. a path that does not exist)
            return None
        if not isinstance(cached, str):
            return None
        readme = Path(cached)
    from huggingface_hub import ModelCard

    try:
        lic = ModelCard.load(readme).data.to_dict().get("license")
    except Exception:  # an unreadable card: no license known
        return None
    return str(lic) if lic else None


def front_matter(base_model: str | None, arch: Architecture, num_steps: int, lora: bool,
                 license: str | None) -> str:
    """The model card's YAML front matter (``---`` ... ``---``), see module docstring. A local
    folder as base is not a hub id: ``base_model`` is then left out."""
    from huggingface_hub import ModelCardData

    hub_id = base_model if base_model and not Path(base_model).expanduser().exists() and \
        base_model.count("/") == 1 else None
    data = ModelCardData(
        base_model=hub_id, library_name="diffusers", license=license or "other",
        pipeline_tag="text-to-image",
        tags=["fewstep", "distillation", f"{num_steps}-step", "text-to-image", "diffusers",
              *(["lora"] if lora else []), arch.tag])
    if hub_id:
        data["base_model_relation"] = "adapter" if lora else "finetune"  # no typed field
    return "---\n" + data.to_yaml() + "\n---\n"


def settings_from_info(info: Mapping[str, Any]) -> SamplerSettings:
    """:class:`SamplerSettings` of an export's ``fewstep_student.json`` content (or the
    ``extra`` of fewstep's own format: ``sigmas`` then come from the index)."""
    t = info.get("teacher") or {}
    sampling = t.get("sampling") or {}
    base = info.get("base") or {}
    source = base.get("source") if base.get("source") not in (None, ".") else None
    return SamplerSettings(
        sigmas=tuple(float(x) for x in info["sigmas"]), transition=str(info["transition"]),
        base_model=str(source or t.get("pretrained") or t.get("path") or t.get("kind", "?")),
        guidance=(info.get("network") or {}).get("guidance"),
        teacher_guidance=sampling.get("cfg_scale"), shift=sampling.get("shift"),
        base_fingerprint=base.get("fingerprint"),
        recipe=(info.get("run") or {}).get("method"),
        license=teacher_license(t.get("pretrained")))


def describe_export(folder: str | os.PathLike[str], info: Mapping[str, Any],
                    net_class: str | None, net_config: Mapping[str, Any] | None) -> str:
    """Stamp every student file of a diffusers-format export in ``folder`` (per-step adapters,
    or the per-step network folders) with :func:`file_header`; returns the model card's
    :func:`front_matter`. ``info``: ``fewstep_student.json``'s content."""
    root = Path(folder)
    s = settings_from_info(info)
    arch = architecture_of(net_class, net_config, (info.get("teacher") or {}).get("resolution"))
    title = f"{Path(s.base_model).name} {s.num_steps}-step (fewstep)"
    lora = info.get("lora")
    if lora:
        for k, name in enumerate(lora["files"]):
            stamp_safetensors(root / name, file_header(arch, s, title, k,
                                                       (int(lora["rank"]), float(lora["alpha"]))))
    else:
        subs = list(info.get("step_subfolders") or [])
        for sub in dict.fromkeys(subs):
            steps = [k for k, x in enumerate(subs) if x == sub]
            for f in sorted((root / sub).glob("*.safetensors")):
                stamp_safetensors(f, file_header(arch, s, title,
                                                 steps[0] if len(steps) == 1 else None))
    return front_matter(s.base_model, arch, s.num_steps, bool(lora), s.license)


def describe_native(folder: str | os.PathLike[str]) -> None:
    """Stamp the files of fewstep's own format (``student_index.json`` + ``step<k>/``) with
    the ``fewstep.*`` sampler keys and a minimal ModelSpec identity."""
    root = Path(folder)
    index = json.loads((root / "student_index.json").read_text(encoding="utf-8"))
    info = {**(index.get("extra") or {}), "sigmas": index["sigmas"]}
    info.setdefault("transition", "fresh")
    s = settings_from_info(info)
    arch = architecture_of(None)
    lora = index.get("lora")
    for k in range(int(index["num_steps"])):
        for f in sorted((root / f"step{k}").glob("*.safetensors")):
            stamp_safetensors(f, file_header(arch, s, f"fewstep {s.num_steps}-step student", k,
                                             (int(lora["rank"]), float(lora["alpha"]))
                                             if lora else None))


__all__ = ["FORMAT", "MODELSPEC_VERSION", "Architecture", "SamplerSettings", "architecture_of",
           "data_sha256", "describe_export", "describe_native", "file_header", "front_matter",
           "read_header", "sampler_header", "settings_from_info", "stamp_safetensors",
           "teacher_license"]
