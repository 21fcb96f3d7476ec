"""Which diffusers pipelines fewstep reads: every pipeline class, classified from the class itself.

A *candidate* is a text-to-image pipeline that denoises one latent (or pixel) image with a
denoiser predicting noise / velocity / x0 at a scheduler time, conditioned on a prompt, and runs
at its default ``__call__`` arguments without an input image. Everything else is refused with
one line saying why (:func:`refusal`): video, audio, editing (img2img, inpainting, instruction
editing), cascaded (prior + decoder), control, upscalers, already-distilled students, ...

:func:`classify` reads facts of the class -- its module, its ``__init__`` components and
``__call__`` parameters -- through ordered rules; :data:`NOTES` records what the signature cannot
tell, each read from that pipeline's source (diffusers 0.42). :func:`enumerate_pipelines` applies
it to every pipeline class of the installed diffusers (``benchmarks/diffusers_coverage.py``
writes the table).
"""

from __future__ import annotations

import inspect
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_NOTES = """
Flux2Pipeline | candidate | image= is an optional reference list; image=None is text-to-image
Flux2KleinPipeline | candidate | image= is an optional reference list; image=None is text-to-image
Kandinsky5T2IPipeline | candidate | Kandinsky5Transformer3DModel run on one frame
Cosmos2TextToImagePipeline | candidate | one-frame CosmosTransformer3DModel, EDM-preconditioned
QwenImage21Pipeline | candidate | image=None is text-to-image
DreamLitePipeline | candidate | image=None is the 'generate' task
DreamLiteMobilePipeline | candidate | image=None is the 'generate' task
BriaFibo2Pipeline | candidate | image / mask optional
PRXPixelPipeline | candidate | pixel-space flow (no VAE)
OmniGenPipeline | candidate | input_images optional; prompt tokens go into the transformer
Ideogram4Pipeline | candidate | two denoisers (conditional + unconditional transformer)
HunyuanImagePipeline | candidate | guidance through a diffusers Guider component
ZImageOmniPipeline | candidate | image optional
LuminaPipeline | candidate | Lumina-Next, Lumina2's predecessor
GlmImagePipeline | cascaded | an autoregressive model makes image tokens; a DiT decodes
Flux2KleinKVPipeline | edit | KV-cached reference-image variant (Flux2KleinPipeline: text-to-image)
QwenImageLayeredPipeline | edit | decomposes an input image into RGBA layers
HunyuanImageRefinerPipeline | upscaler | refiner: denoises an input image
VisualClozePipeline | edit | in-context visual prompting: needs example images
VisualClozeGenerationPipeline | edit | in-context visual prompting: needs example images
FluxPriorReduxPipeline | other | no denoiser: maps an image to Flux prompt embeddings
SanaSprintPipeline | distilled | already a 1-4 step consistency student (sCM / TrigFlow)
LatentConsistencyModelPipeline | distilled | already a latent consistency (LCM) student
IFPipeline | cascaded | DeepFloyd IF stage I: 64x64 pixels for the IF super-resolution stages
StableUnCLIPPipeline | cascaded | a prior plus an image-embedding-conditioned decoder
StableUnCLIPImg2ImgPipeline | cascaded | a decoder conditioned on a CLIP image embedding of image=
KandinskyCombinedPipeline | cascaded | Kandinsky 2.1 prior + decoder
KandinskyV22CombinedPipeline | cascaded | Kandinsky 2.2 prior + decoder
StableCascadeCombinedPipeline | cascaded | Stable Cascade prior + decoder + VQGAN
StableCascadePriorPipeline | cascaded | Stable Cascade stage C: outputs image embeddings
StableCascadeDecoderPipeline | cascaded | Stable Cascade stage B: needs the prior's image embeddings
KandinskyPipeline | cascaded | Kandinsky 2.1 decoder: needs image_embeds from its prior
KandinskyV22Pipeline | cascaded | Kandinsky 2.2 decoder: needs image_embeds from its prior
KandinskyPriorPipeline | cascaded | Kandinsky 2.1 prior: outputs CLIP image embeddings
KandinskyV22PriorPipeline | cascaded | Kandinsky 2.2 prior: outputs CLIP image embeddings
KandinskyV22PriorEmb2EmbPipeline | cascaded | Kandinsky 2.2 prior from an image embedding
ShapEPipeline | 3d | denoises implicit 3-d latents and renders views
ShapEImg2ImgPipeline | 3d | image to 3-d
DiTPipeline | class-conditional | conditioned on ImageNet class_labels, no prompt
DiffusionGemmaPipeline | text | a discrete text-diffusion language model, no image
LLaDA2Pipeline | text | a discrete text-diffusion language model, no image
RFD4ProteinaPipeline | other | protein structure generation
Cosmos3OmniPipeline | video | a video + audio world model
Kandinsky6SRPipeline | upscaler | video super-resolution
LTX2LatentUpsamplePipeline | upscaler | video latent upsampler
LTXLatentUpsamplePipeline | upscaler | video latent upsampler
LTX2VideoDiffusionDecodePipeline | video | a diffusion video decoder
MarigoldDepthPipeline | depth | depth estimation from an input image
MarigoldNormalsPipeline | depth | surface-normal estimation from an input image
MarigoldIntrinsicsPipeline | depth | intrinsic image decomposition from an input image
LDMSuperResolutionPipeline | upscaler | super-resolution of an input image
StableDiffusionLatentUpscalePipeline | upscaler | x2 latent upscaler of an input image
StableDiffusionUpscalePipeline | upscaler | x4 upscaler of an input image
StableDiffusionImageVariationPipeline | edit | conditioned on a CLIP image embedding, no prompt
StableDiffusionDepth2ImgPipeline | depth | needs an input image and its depth map
SanaWMPipeline | video | a camera-controlled video world model
BlipDiffusionControlNetPipeline | control | subject-driven (reference image) + ControlNet
CogView4ControlPipeline | control | a control image concatenated to the latent input
FluxKontextPipeline | edit | an image-conditioned editing model (FluxPipeline covers text-to-image)
StableDiffusionInstructPix2PixPipeline | edit | instruction editing: image= required, 3-way CFG
StableDiffusionXLInstructPix2PixPipeline | edit | instruction editing: image= required, 3-way CFG
WanAnimatePipeline | video | character animation from an image and pose / face videos
ConsistencyModelPipeline | unconditional | a pixel consistency model without a prompt
"""
#: pipeline class -> (category, reason) where the signature cannot tell (read from the source)
NOTES: dict[str, tuple[str, str]] = {
    ln.split(" | ")[0]: (ln.split(" | ")[1], ln.split(" | ", 2)[2])
    for ln in _NOTES.strip().splitlines()}

_AUDIO = ("audio", "ace_step", "stable_audio", "musicldm", "dance_diffusion", "minimax_music3",
          "spectrogram", "longcat_audio")
_VIDEO_PARAMS = ("num_frames", "video_length", "video", "video_latents")
_AUDIO_PARAMS = ("audio_length_in_s", "audio_end_in_s", "audio_duration", "duration", "lyrics")
_DENOISERS = ("transformer", "unet", "prior", "decoder", "model", "image_unet", "prior_prior")


@dataclass
class PipelineFacts:
    """What :func:`classify` reads of a pipeline class."""

    name: str
    module: str
    kind: str  # pipeline | modular | unavailable | base
    components: dict[str, str] = field(default_factory=dict)
    call: dict[str, str] = field(default_factory=dict)  # name -> repr(default) or "REQUIRED"
    denoiser: str = ""


def _ann(a: Any) -> str:
    if a is inspect.Parameter.empty:
        return "?"
    s = a if isinstance(a, str) else getattr(a, "__name__", None) or str(a)
    return re.sub(r"[A-Za-z_][\w.]*\.(\w+)", r"\1", str(s)).replace("typing.", "")


def pipeline_facts(name: str, cls: Any) -> PipelineFacts:
    """Module, kind, ``__init__`` component annotations and ``__call__`` parameters."""
    from diffusers import DiffusionPipeline
    from diffusers.modular_pipelines import ModularPipeline

    mod = getattr(cls, "__module__", "?").replace("diffusers.pipelines.", "")
    if cls in (DiffusionPipeline, ModularPipeline):
        return PipelineFacts(name, mod, "base")
    if "dummy_" in mod:
        return PipelineFacts(name, mod, "unavailable")
    if issubclass(cls, ModularPipeline):
        return PipelineFacts(name, mod, "modular")
    f = PipelineFacts(name, mod, "pipeline")
    for k, p in inspect.signature(cls.__init__).parameters.items():
        if k not in ("self", "args", "kwargs"):
            f.components[k] = _ann(p.annotation)
    for k, p in list(inspect.signature(cls.__call__).parameters.items())[1:]:
        f.call[k] = "REQUIRED" if p.default is inspect.Parameter.empty else repr(p.default)[:60]
    f.denoiser = next((f.components[k] for k in _DENOISERS if k in f.components), "")
    return f


def classify(f: PipelineFacts, all_names: set[str]) -> tuple[str, str]:
    """Ordered rules -> ``(category, one-line reason)``; category ``candidate`` is supported."""
    c, comps, n = f.call, f.components, f.name
    if f.kind == "base":
        return "skip", "base class"
    if f.kind == "unavailable":
        deps = f.module.split("dummy_", 1)[1].replace("_objects", "").replace("_and_", ", ")
        return "unavailable", f"optional backend(s) missing ({deps})"
    if f.kind == "modular":
        base = n.replace("ModularPipeline", "Pipeline")
        tail = f"; use {base}" if base in all_names else ""
        return "modular", "a ModularPipeline (blocks, no fixed __call__ to read)" + tail
    if ".deprecated." in "." + f.module:
        return "deprecated", f"deprecated in diffusers ({f.module.split('.')[1]})"
    if n in NOTES:
        return NOTES[n]
    family = f.module.split(".")[0]
    if any(a in family for a in _AUDIO) or any(p in c for p in _AUDIO_PARAMS):
        return "audio", f"audio generation (denoiser {f.denoiser or '?'})"
    vid = [p for p in _VIDEO_PARAMS if p in c]
    if vid:
        return "video", f"video: __call__ takes {', '.join(vid)} (denoiser {f.denoiser})"
    if ("3D" in f.denoiser and "video" in family) or "Video" in n:
        return "video", f"video (denoiser {f.denoiser})"
    if "PAG" in n:
        base = n.replace("PAG", "")
        return "variant", (f"perturbed-attention guidance variant of "
                           f"{base if base in all_names else 'its base pipeline'}")
    if "controlnet" in comps or "control_image" in c or "Control" in n:
        return "control", "needs a control image (controlnet / control_image)"
    if "adapter" in comps:
        return "adapter", "a T2I-Adapter pipeline: needs a conditioning image"
    if "mask_image" in c or "mask" in c:
        return "edit", "inpainting: needs image= and mask_image="
    if "strength" in c:
        return "edit", "img2img: starts from an encoded input image (strength=)"
    if "SuperResolution" in n or "Upscale" in n:
        return "upscaler", "super-resolution of an input image"
    if "Edit" in n or ("image" in c and c.get("image") == "REQUIRED") or "images" in c:
        return "edit", "editing: an input image is the condition"
    if any(k in comps for k in ("prior", "prior_prior")) or "image_embeds" in c:
        return "cascaded", "a prior and a decoder (image embeddings between the stages)"
    if "class_labels" in c:
        return "class-conditional", "conditioned on class_labels, no prompt"
    if "prompt" not in c:
        return "unconditional", f"no prompt in __call__ (denoiser {f.denoiser or '?'})"
    if "image" in c:
        return "edit", "takes image= (not known to run text-to-image without it)"
    if not f.denoiser:
        return "other", "no transformer / unet component"
    return "candidate", ""


def _pipeline_names() -> set[str]:
    import diffusers
    import diffusers.pipelines as dp

    return {n for n in dir(diffusers) if n.endswith("Pipeline")} | \
        {n for n in dir(dp) if n.endswith("Pipeline")}


def refusal(pipeline_class: str) -> str | None:
    """``None`` for a supported (candidate) pipeline class, else one line saying why not."""
    import diffusers
    import diffusers.pipelines as dp

    cls = getattr(diffusers, pipeline_class, None) or getattr(dp, pipeline_class, None)
    if not isinstance(cls, type):
        return f"{pipeline_class} is not a pipeline class of diffusers {diffusers.__version__}"
    category, reason = classify(pipeline_facts(pipeline_class, cls), _pipeline_names())
    if category == "candidate":
        return None
    return f"{pipeline_class} is not supported ({category}: {reason})"


def enumerate_pipelines() -> list[tuple[PipelineFacts, str, str]]:
    """``(facts, category, reason)`` of every pipeline class of the installed diffusers."""
    import diffusers
    import diffusers.pipelines as dp

    names = _pipeline_names()
    rows = []
    for n in sorted(names):
        f = pipeline_facts(n, getattr(diffusers, n, None) or getattr(dp, n))
        category, reason = classify(f, names)
        if category != "skip":
            rows.append((f, category, reason))
    return rows


def check_folder(folder: str | Path, only: tuple[str, ...] | None = None) -> str | None:
    """The pipeline class of a local pipeline folder (``None`` if it has no
    ``model_index.json``); ``ValueError`` naming the first component ``model_index.json`` lists
    whose folder is missing or empty (``only``: just these components, e.g. what ``fewstep
    plan`` reads from configs)."""
    root = Path(folder).expanduser()
    index = root / "model_index.json"
    if not index.is_file():
        return None
    raw = json.loads(index.read_text(encoding="utf-8"))
    for name, value in raw.items():
        if name.startswith("_") or not isinstance(value, list) or value[0] is None or (
                only is not None and name not in only):
            continue
        sub = root / name
        if not sub.is_dir() or not any(sub.iterdir()):
            raise ValueError(f"{root} lacks the component {name!r} ({value[1]}) that "
                             "model_index.json lists: no folder "
                             f"{name}/" + ("" if not sub.is_dir() else " content"))
    return raw.get("_class_name")


__all__ = ["NOTES", "PipelineFacts", "check_folder", "classify", "enumerate_pipelines",
           "pipeline_facts", "refusal"]
