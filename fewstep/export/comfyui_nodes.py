"""The ComfyUI nodes fewstep's workflows use, described by fewstep, and a checker of an
API-format graph against that description.

The description records, for each node class, its required inputs and its outputs, as
ComfyUI's ``/object_info`` reports them (written down by hand from ComfyUI's node
definitions at commit a125cd84 of Comfy-Org/ComfyUI, 2025-10-12; ``benchmarks/comfyui_engine.py``
compares it with a ComfyUI checkout's own ``INPUT_TYPES`` when one is given). An input is

* a link type (``"MODEL"``, ``"CLIP"``, ``"VAE"``, ``"CONDITIONING"``, ``"LATENT"``,
  ``"IMAGE"``, ``"NOISE"``, ``"GUIDER"``, ``"SAMPLER"``, ``"SIGMAS"``): the value must be a
  link ``[node_id, output_index]`` to an output of that type;
* :data:`FILE`: a file name from one of ComfyUI's model folders (any string: what is installed
  differs per machine);
* a tuple of strings: a choice; ``Num("INT" | "FLOAT", lo, hi)``: a number in ``[lo, hi]``;
  ``"STRING"``: any text.

API format: ``{node_id: {"class_type": str, "inputs": {name: value | [src_id, k]}}}``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

FILE = "FILE"
LINK_TYPES = ("MODEL", "CLIP", "VAE", "CONDITIONING", "LATENT", "IMAGE", "NOISE", "GUIDER",
              "SAMPLER", "SIGMAS")
SEED_MAX = 2**64 - 1
SIZE = (16, 16384)


@dataclass(frozen=True)
class Num:
    kind: str  # "INT" or "FLOAT"
    lo: float
    hi: float


@dataclass(frozen=True)
class Node:
    inputs: dict[str, Any]
    outputs: tuple[str, ...]


_SAMPLERS = ("euler", "euler_ancestral", "heun", "dpmpp_2m", "dpmpp_sde", "ddim", "uni_pc",
             "lcm")
_SCHEDULERS = ("simple", "sgm_uniform", "karras", "exponential", "ddim_uniform", "beta",
               "normal", "linear_quadratic", "kl_optimal")
_SHIFT = Num("FLOAT", 0.0, 100.0)

#: node class -> required inputs and outputs (see module docstring)
NODES: dict[str, Node] = {
    "UNETLoader": Node({"unet_name": FILE, "weight_dtype": (
        "default", "fp8_e4m3fn", "fp8_e4m3fn_fast", "fp8_e5m2")}, ("MODEL",)),
    "CLIPLoader": Node({"clip_name": FILE, "type": (
        "stable_diffusion", "stable_cascade", "sd3", "stable_audio", "mochi", "ltxv", "pixart",
        "cosmos", "lumina2", "wan", "hidream", "chroma", "ace", "omnigen2", "qwen_image",
        "hunyuan_image")}, ("CLIP",)),
    "DualCLIPLoader": Node({"clip_name1": FILE, "clip_name2": FILE, "type": (
        "sdxl", "sd3", "flux", "hunyuan_video", "hidream", "hunyuan_image")}, ("CLIP",)),
    "TripleCLIPLoader": Node({"clip_name1": FILE, "clip_name2": FILE, "clip_name3": FILE},
                             ("CLIP",)),
    "VAELoader": Node({"vae_name": FILE}, ("VAE",)),
    "LoraLoaderModelOnly": Node({"model": "MODEL", "lora_name": FILE,
                                 "strength_model": Num("FLOAT", -100.0, 100.0)}, ("MODEL",)),
    "CLIPTextEncode": Node({"text": "STRING", "clip": "CLIP"}, ("CONDITIONING",)),
    "FluxGuidance": Node({"conditioning": "CONDITIONING", "guidance": Num("FLOAT", 0.0, 100.0)},
                         ("CONDITIONING",)),
    "EmptySD3LatentImage": Node({"width": Num("INT", *SIZE), "height": Num("INT", *SIZE),
                                 "batch_size": Num("INT", 1, 4096)}, ("LATENT",)),
    "ModelSamplingAuraFlow": Node({"model": "MODEL", "shift": _SHIFT}, ("MODEL",)),
    "ModelSamplingSD3": Node({"model": "MODEL", "shift": _SHIFT}, ("MODEL",)),
    "ModelSamplingFlux": Node({"model": "MODEL", "max_shift": _SHIFT, "base_shift": _SHIFT,
                               "width": Num("INT", *SIZE), "height": Num("INT", *SIZE)},
                              ("MODEL",)),
    "BasicGuider": Node({"model": "MODEL", "conditioning": "CONDITIONING"}, ("GUIDER",)),
    "KSamplerSelect": Node({"sampler_name": _SAMPLERS}, ("SAMPLER",)),
    "BasicScheduler": Node({"model": "MODEL", "scheduler": _SCHEDULERS,
                            "steps": Num("INT", 1, 10000), "denoise": Num("FLOAT", 0.0, 1.0)},
                           ("SIGMAS",)),
    "SetFirstSigma": Node({"sigmas": "SIGMAS", "sigma": Num("FLOAT", 0.0, 20000.0)},
                          ("SIGMAS",)),
    "RandomNoise": Node({"noise_seed": Num("INT", 0, SEED_MAX)}, ("NOISE",)),
    "SamplerCustomAdvanced": Node({"noise": "NOISE", "guider": "GUIDER", "sampler": "SAMPLER",
                                   "sigmas": "SIGMAS", "latent_image": "LATENT"},
                                  ("LATENT", "LATENT")),
    "VAEDecode": Node({"samples": "LATENT", "vae": "VAE"}, ("IMAGE",)),
    "SaveImage": Node({"images": "IMAGE", "filename_prefix": "STRING"}, ()),
}


def _check_value(where: str, spec: Any, val: Any, graph: dict[str, Any],
                 nodes: dict[str, Node]) -> str | None:
    """One input's problem, or ``None``."""
    if spec in LINK_TYPES:
        if not (isinstance(val, list) and len(val) == 2):
            return f"{where}: expects a link to a {spec} output, got {val!r}"
        src = graph.get(str(val[0]))
        if src is None or src.get("class_type") not in nodes:
            return f"{where}: link to a missing node {val!r}"
        outs = nodes[src["class_type"]].outputs
        if not (isinstance(val[1], int) and 0 <= val[1] < len(outs)):
            return f"{where}: output {val[1]!r} of {src['class_type']} does not exist"
        if outs[val[1]] != spec:
            return f"{where}: expects {spec}, linked to {src['class_type']} output {outs[val[1]]}"
        return None
    if isinstance(val, list):
        return f"{where}: a widget value, not a link, expected (got {val!r})"
    if spec in (FILE, "STRING"):
        return None if isinstance(val, str) else f"{where}: {val!r} is not a string"
    if isinstance(spec, tuple):
        return None if val in spec else f"{where}: {val!r} is not one of {list(spec)}"
    if isinstance(spec, Num):
        ok = (isinstance(val, int) if spec.kind == "INT" else isinstance(val, int | float))
        if not ok or isinstance(val, bool):
            return f"{where}: {val!r} is not {spec.kind}"
        if not spec.lo <= val <= spec.hi:
            return f"{where}: {val} outside [{spec.lo:g}, {spec.hi:g}]"
        return None
    return f"{where}: unknown input kind {spec!r}"


def check_workflow(graph: dict[str, Any], nodes: dict[str, Node] | None = None) -> list[str]:
    """Problems of an API-format ``graph`` (empty: valid): unknown node classes, missing or
    unknown inputs, links to missing nodes or outputs or of the wrong type, widget values of
    the wrong type, outside their range or not among the choices, and cycles."""
    nodes = NODES if nodes is None else nodes
    errs: list[str] = []
    for nid, n in graph.items():
        cls = n.get("class_type")
        if cls not in nodes:
            errs.append(f"node {nid}: unknown class_type {cls!r}")
            continue
        spec, given = nodes[cls].inputs, n.get("inputs", {})
        errs += [f"node {nid} ({cls}): missing input {k!r}" for k in spec if k not in given]
        for name, val in given.items():
            if name not in spec:
                errs.append(f"node {nid} ({cls}): unknown input {name!r}")
                continue
            err = _check_value(f"node {nid} ({cls}).{name}", spec[name], val, graph, nodes)
            if err:
                errs.append(err)
    state: dict[str, int] = {}

    def cyclic(nid: str) -> bool:
        if state.get(nid) == 1:
            return True
        if state.get(nid) == 2 or nid not in graph:
            return False
        state[nid] = 1
        links = [v for v in graph[nid].get("inputs", {}).values()
                 if isinstance(v, list) and len(v) == 2]
        if any(cyclic(str(v[0])) for v in links):
            return True
        state[nid] = 2
        return False

    if any(cyclic(n) for n in graph):
        errs.append("the graph has a cycle")
    return errs


__all__ = ["FILE", "LINK_TYPES", "NODES", "Node", "Num", "check_workflow"]
