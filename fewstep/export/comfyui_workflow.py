"""A ComfyUI workflow (API format) that samples a K-step LoRA student as fewstep does.

Step ``k`` is one ``SamplerCustomAdvanced`` node:

* model: the base (``UNETLoader``) -> ``LoraLoaderModelOnly`` with step ``k``'s file -> the
  family's ``ModelSampling*`` node (its shift: the teacher's);
* sigmas ``[sigma_k, 0]``: ``BasicScheduler(steps=1)`` gives ``[1, 0]`` for a flow model,
  ``SetFirstSigma`` puts ``sigma_k`` first, so one Euler step lands on the step's ``x0_hat``;
* noise: ComfyUI starts a step from ``sigma_k * noise + (1 - sigma_k) * latent`` (its flow
  noise scaling), ``latent`` = the previous step's output. That is fewstep's ``fresh``
  transition with a new seed per step; fewstep's ``ddim`` transition re-uses the noise the
  previous step predicted, which for K = 2 (``sigma_0 = 1``) is the initial noise: the same
  seed again. ``ddim`` with K > 2 has no such graph and is refused.

The prompt goes through ``BasicGuider`` (no CFG: the student was distilled from the guided
teacher); a guidance-distilled Flux gets ``FluxGuidance`` with the guidance the student was
trained with. Families: flow-matching models ComfyUI has (Z-Image, Flux.1, SD3.x,
Qwen-Image). VP families (SD 1.x, SDXL, PixArt) are refused: ComfyUI's first step starts at
the model's largest discrete sigma, not at fewstep's sigma = 1. File names of the base model,
text encoders and VAE are placeholders to set to the files installed in ComfyUI.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class FamilyNodes:
    """How one family is loaded and sampled in ComfyUI (placeholder file names)."""

    sampling: str
    text_loader: str
    text_inputs: dict[str, str]
    files: dict[str, str] = field(default_factory=dict)


#: diffusers denoiser class -> its ComfyUI nodes
FAMILY_NODES: dict[str, FamilyNodes] = {
    "ZImageTransformer2DModel": FamilyNodes(
        "ModelSamplingAuraFlow", "CLIPLoader",
        {"clip_name": "qwen_3_4b.safetensors", "type": "lumina2"},
        {"unet": "z_image_turbo_bf16.safetensors", "vae": "ae.safetensors"}),
    "FluxTransformer2DModel": FamilyNodes(
        "ModelSamplingFlux", "DualCLIPLoader",
        {"clip_name1": "clip_l.safetensors", "clip_name2": "t5xxl_fp16.safetensors",
         "type": "flux"},
        {"unet": "flux1-dev.safetensors", "vae": "ae.safetensors"}),
    "SD3Transformer2DModel": FamilyNodes(
        "ModelSamplingSD3", "TripleCLIPLoader",
        {"clip_name1": "clip_g.safetensors", "clip_name2": "clip_l.safetensors",
         "clip_name3": "t5xxl_fp16.safetensors"},
        {"unet": "sd3.5_large.safetensors", "vae": "sd3.5_vae.safetensors"}),
    "QwenImageTransformer2DModel": FamilyNodes(
        "ModelSamplingAuraFlow", "CLIPLoader",
        {"clip_name": "qwen_2.5_vl_7b.safetensors", "type": "qwen_image"},
        {"unet": "qwen_image_bf16.safetensors", "vae": "qwen_image_vae.safetensors"}),
}


def workflow_problem(net_class: str, num_steps: int, transition: str) -> str | None:
    """Why no workflow can be written for this student, or ``None``."""
    if net_class not in FAMILY_NODES:
        return (f"no ComfyUI workflow for {net_class}: workflows exist for the flow-matching "
                f"families {', '.join(sorted(FAMILY_NODES))} (ComfyUI samples VP models from "
                "its largest discrete sigma, not from fewstep's sigma = 1)")
    if transition not in ("fresh", "ddim") or (transition == "ddim" and num_steps > 2):
        return (f"no ComfyUI workflow for a {num_steps}-step student with the {transition} "
                "transition (fresh: any K; ddim: K = 2)")
    return None


def student_workflow(net_class: str, lora_files: Sequence[str], sigmas: Sequence[float],
                     transition: str, *, prompt: str, width: int, height: int, seed: int = 0,
                     shift: float | None = None, guidance: float | None = None,
                     lora_strength: float = 1.0, dynamic_shift: tuple[float, float] = (1.15, 0.5),
                     files: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The graph of the module docstring; ``files`` overrides the placeholder file names
    (``unet``, ``vae`` and the text loader's inputs); ``dynamic_shift`` = Flux's
    ``(max_shift, base_shift)``. ``ValueError`` for a student it cannot express."""
    problem = workflow_problem(net_class, len(sigmas), transition)
    if problem:
        raise ValueError(problem)
    if len(lora_files) != len(sigmas):
        raise ValueError(f"{len(lora_files)} LoRA files for {len(sigmas)} steps")
    sig = [float(s) for s in sigmas]
    if abs(sig[0] - 1.0) > 1e-6 or any(not a > b > 0 for a, b in itertools.pairwise(sig)):
        raise ValueError(f"sigmas must start at 1 and decrease to > 0, got {sig}")
    fam = FAMILY_NODES[net_class]
    names = {**fam.files, **fam.text_inputs, **dict(files or {})}
    g: dict[str, Any] = {}

    def node(cls: str, title: str, **inputs: Any) -> list[Any]:
        nid = str(len(g) + 1)
        g[nid] = {"class_type": cls, "inputs": inputs, "_meta": {"title": title}}
        return [nid, 0]

    unet = node("UNETLoader", "base model", unet_name=names["unet"], weight_dtype="default")
    clip = node(fam.text_loader, "text encoder",
                **{k: names[k] for k in fam.text_inputs})
    vae = node("VAELoader", "VAE", vae_name=names["vae"])
    cond = node("CLIPTextEncode", "prompt", text=prompt, clip=clip)
    if guidance is not None:
        cond = node("FluxGuidance", "guidance the student was trained with", conditioning=cond,
                    guidance=float(guidance))
    x = node("EmptySD3LatentImage", "empty latent", width=int(width), height=int(height),
             batch_size=1)
    sampler = node("KSamplerSelect", "one Euler step per student step", sampler_name="euler")
    if fam.sampling == "ModelSamplingFlux":
        samp = {"max_shift": float(dynamic_shift[0]), "base_shift": float(dynamic_shift[1]),
                "width": int(width), "height": int(height)}
    else:
        samp = {"shift": float(shift if shift is not None else 1.0)}
    for k, (f, s) in enumerate(zip(lora_files, sig, strict=True)):
        step = f"step {k + 1}/{len(sig)}"
        m = node("LoraLoaderModelOnly", f"{step} LoRA", model=unet, lora_name=f,
                 strength_model=float(lora_strength))
        m = node(fam.sampling, f"{step} model sampling", model=m, **samp)
        guider = node("BasicGuider", f"{step} guider (no CFG)", model=m, conditioning=cond)
        one = node("BasicScheduler", f"{step} [1, 0]", model=m, scheduler="simple", steps=1,
                   denoise=1.0)
        sigmas_k = node("SetFirstSigma", f"{step} [{s:.6g}, 0]", sigmas=one, sigma=s)
        noise_seed = seed if (k == 0 or transition == "ddim") else seed + k
        noise = node("RandomNoise", f"{step} noise", noise_seed=int(noise_seed))
        x = node("SamplerCustomAdvanced", f"{step}: x0 at sigma {s:.6g}", noise=noise,
                 guider=guider, sampler=sampler, sigmas=sigmas_k, latent_image=x)
    img = node("VAEDecode", "decode", samples=x, vae=vae)
    node("SaveImage", "save", images=img, filename_prefix="fewstep")
    return g


__all__ = ["FAMILY_NODES", "FamilyNodes", "student_workflow", "workflow_problem"]
