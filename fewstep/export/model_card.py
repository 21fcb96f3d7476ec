"""The loading snippet and model card (``README.md``) of an exported diffusers-format student.

The snippet is plain diffusers (+ safetensors; peft for LoRA on models without a LoRA loader,
and for every ``teacher.kind: diffusers`` LoRA student):
it loads the export, defines ``use_step(k) -> network`` (switches the per-step parameters)
and a sampling function ``few_step`` of at most 15 lines that runs the student's K steps with
its transition (``fresh``: re-noise with new noise, ``ddim``: reuse the predicted noise) and
returns ``(images, x0)`` (``x0``: the final latents, or the images in pixel space). From the
same seed it computes exactly what :class:`~fewstep.export.diffusers_export.
StudentPipeline` computes: noise from ``torch.Generator().manual_seed(seed)`` on the CPU, then
one fresh noise per transition from the same generator. For ``teacher.kind: diffusers`` students
(family ``diffusers``) it loads the teacher's own pipeline class and also defines
``encode(prompts)`` (the pipeline's ``encode_prompt`` conditioned as fewstep conditions the
network) and ``call(net, x, t, cond)`` (the family's call signature of
:data:`fewstep.teachers.diffusers.families.FAMILIES`, written out).

``info`` is the content of ``fewstep_student.json`` (see :mod:`fewstep.export.diffusers_export`).
"""

from __future__ import annotations

import inspect
import json
from typing import Any

import diffusers


def _floats(xs: list[float]) -> str:
    return "[" + ", ".join(repr(float(x)) for x in xs) + "]"


def _dtype(name: str) -> str:
    return f"torch.{name}"


def _lora_restore(net: str, k: str) -> list[str]:
    """Lines that set step ``k``'s adapter tensors to exactly the saved ones (diffusers and
    peft create adapters in the base's dtype; the student computes them in theirs)."""
    return [
        f"    params = dict({net}.named_parameters())  # keep the adapters' saved dtype",
        f'    for name, t in load_file(f"{{FOLDER}}/step{{{k}}}/adapter.safetensors").items():',
        f'        params[name.split(".", 1)[1].replace(".weight", f".step{{{k}}}.weight")]'
        ".data = t.to(DEVICE)",
    ]


def _header(info: dict[str, Any], folder: str) -> list[str]:
    lines = [f"FOLDER = {folder!r}  # this export"]
    if info["parameterization"] == "lora" and info["base"]["copied"]:
        lines.append("BASE = FOLDER  # the frozen base is copied into this export")
    elif info["parameterization"] == "lora":
        lines.append(f"BASE = {info['base']['source']!r}  # the frozen base (hub id or folder)")
    lines += ['DEVICE = "cpu"',
              f"SIGMAS = torch.tensor({_floats(info['sigmas'])})  # input noise level of each "
              "step (1 = pure noise)"]
    return lines


#: ``few_step``'s transition to the next level: fresh re-noising or the deterministic (ddim) step
_TRANSITION = [
    "        if k + 1 < len(SIGMAS):  # fresh re-noising or the deterministic (ddim) step",
    "            eps = torch.randn(x.shape, generator=g).to(DEVICE) if transition == "
    '"fresh" else (x - (1 - s) * x0) / s',
    "            x = (1 - SIGMAS[k + 1]) * x0 + SIGMAS[k + 1] * eps",
]


def _prompt_few_step_head(info: dict[str, Any], encode_line: str) -> list[str]:
    """``few_step(prompts, ...)`` of a text-to-image student up to its first noise."""
    c, h, w = info["latent_shape"]
    f = info["vae_factor"]
    return ["", "", "@torch.no_grad()",
            f"def few_step(prompts, seed=0, height={h * f}, width={w * f}, "
            f"transition={info['transition']!r}):",
            encode_line,
            "    g = torch.Generator().manual_seed(seed)",
            f"    x = torch.randn((len(prompts), {c}, height // {f}, width // {f}), "
            "generator=g).to(DEVICE)"]


def _zimage_snippet(info: dict[str, Any], folder: str) -> list[str]:
    k_steps, lora = info["num_steps"], info["parameterization"] == "lora"
    pdt = _dtype(info["dtypes"]["pipeline"])
    lines = ["import torch", "from diffusers import ZImagePipeline, ZImageTransformer2DModel"]
    if lora:
        lines.append("from safetensors.torch import load_file")
    lines += ["", *_header(info, folder), ""]
    if lora:
        lines += [f"pipe = ZImagePipeline.from_pretrained(BASE, dtype={pdt}).to(DEVICE)",
                  f"for k in range({k_steps}):",
                  '    pipe.load_lora_weights(f"{FOLDER}/step{k}", '
                  'weight_name="adapter.safetensors", adapter_name=f"step{k}")',
                  *_lora_restore("pipe.transformer", "k"), "",
                  "", "def use_step(k):", '    pipe.set_adapters(f"step{k}")',
                  "    return pipe.transformer"]
    else:
        folders = info["step_subfolders"]
        sdt = _dtype(info["dtypes"]["denoiser"])
        lines += [f"STEP_FOLDERS = {folders!r}",
                  "nets = {f: ZImageTransformer2DModel.from_pretrained(FOLDER, subfolder=f, "
                  f"dtype={sdt}).to(DEVICE)",
                  "        for f in dict.fromkeys(STEP_FOLDERS)}",
                  f"pipe = ZImagePipeline.from_pretrained(FOLDER, transformer=nets[{folders[0]!r}],"
                  f" dtype={pdt}).to(DEVICE)", "",
                  "", "def use_step(k):", "    return nets[STEP_FOLDERS[k]]"]
    lines += [
        *_prompt_few_step_head(
            info, "    emb, _ = pipe.encode_prompt(list(prompts), device=DEVICE, "
            "do_classifier_free_guidance=False, "
            f"max_sequence_length={info['max_sequence_length']})"),
        "    for k, s in enumerate(SIGMAS):",
        "        net = use_step(k)  # step k's parameters",
        "        out = net(list(x.to(net.dtype).unsqueeze(2)), (1 - s).expand(len(x)),",
        "                  [e.to(net.dtype) for e in emb], return_dict=False)[0]  # x0 - noise",
        "        x0 = x + s * torch.stack(out).squeeze(2).to(x.dtype)",
        *_TRANSITION,
        "    z = x0.to(pipe.vae.dtype) / pipe.vae.config.scaling_factor + "
        "pipe.vae.config.shift_factor",
        "    return pipe.vae.decode(z).sample, x0",
    ]
    return lines


def _unet_snippet(info: dict[str, Any], folder: str) -> list[str]:
    k_steps, lora = info["num_steps"], info["parameterization"] == "lora"
    u = info["unet"]
    sdt = _dtype(info["dtypes"]["denoiser"])
    lines = ["import torch", "from diffusers import UNet2DModel"]
    if lora:
        lines = ["import json", "", *lines, "from peft import LoraConfig, inject_adapter_in_model",
                 "from peft.tuners.tuners_utils import BaseTunerLayer",
                 "from safetensors.torch import load_file"]
    lines += ["", *_header(info, folder),
              f"TIMESTEPS = torch.tensor({_floats(u['timesteps'])})  # UNet timestep of each step",
              ""]
    if lora:
        lines += [f'unet = UNet2DModel.from_pretrained(BASE, subfolder="unet", dtype={sdt})'
                  ".to(DEVICE)",
                  f"for k in range({k_steps}):",
                  '    config = json.load(open(f"{FOLDER}/step{k}/adapter_config.json"))',
                  "    inject_adapter_in_model(LoraConfig(**config), unet, "
                  'adapter_name=f"step{k}")',
                  *_lora_restore("unet", "k"), "", "",
                  "def use_step(k):",
                  "    for m in unet.modules():",
                  "        if isinstance(m, BaseTunerLayer):",
                  '            m.set_adapter(f"step{k}")',
                  "    return unet"]
    else:
        lines += [f"STEP_FOLDERS = {info['step_subfolders']!r}",
                  "nets = {f: UNet2DModel.from_pretrained(FOLDER, subfolder=f, "
                  f"dtype={sdt}).to(DEVICE)",
                  "        for f in dict.fromkeys(STEP_FOLDERS)}", "", "",
                  "def use_step(k):", "    return nets[STEP_FOLDERS[k]]"]
    pred = {
        "epsilon": f"x0 = (x - s * out) / (1 - s).clamp_min({u['min_one_minus_sigma']!r})",
        "sample": "x0 = out",
        "v_prediction": "x0 = (1 - s) * x * c_in - s * c_in * out  # sqrt(abar) = (1 - s) c_in",
    }[u["prediction_type"]]
    shape = ", ".join(str(d) for d in info["latent_shape"])
    lines += [
        "", "", "@torch.no_grad()",
        f"def few_step(labels, seed=0, transition={info['transition']!r}):",
        "    labels = torch.as_tensor(labels, device=DEVICE)",
        "    g = torch.Generator().manual_seed(seed)",
        f"    x = torch.randn((len(labels), {shape}), generator=g).to(DEVICE)",
        "    for k, (s, t) in enumerate(zip(SIGMAS, TIMESTEPS)):",
        "        net, c_in = use_step(k), ((1 - s) ** 2 + s ** 2).rsqrt()  # flow -> VP input",
        "        out = net((x * c_in).to(net.dtype), t.expand(len(x)), "
        "class_labels=labels).sample.to(x.dtype)",
        f"        {pred}",
        *_TRANSITION,
        "    return x0, x0",
    ]
    return lines


def _encode_kwargs(pipeline_class: str, max_sequence_length: int | None) -> str:
    """``encode_prompt`` keyword arguments as fewstep passes them (no CFG branch)."""
    params = inspect.signature(getattr(diffusers, pipeline_class).encode_prompt).parameters
    kw = []
    if "device" in params:
        kw.append("device=DEVICE")
    if "do_classifier_free_guidance" in params:
        kw.append("do_classifier_free_guidance=False")
    if "num_images_per_prompt" in params:
        kw.append("num_images_per_prompt=1")
    if max_sequence_length is not None and "max_sequence_length" in params:
        kw.append(f"max_sequence_length={int(max_sequence_length)}")
    if "clean_caption" in params:
        kw.append("clean_caption=False")
    return ", ".join(kw)


def _encode_lines(info: dict[str, Any]) -> list[str]:
    """``encode(prompts) -> (emb, mask, pooled)`` as fewstep conditions the network: rows cut to
    their valid tokens (families with a mask) and zero-padded to the longest one."""
    net = info["network"]
    kw = _encode_kwargs(info["pipeline_class"], info.get("max_sequence_length"))
    lines = ["def encode(prompts):",
             f"    out = pipe.encode_prompt(list(prompts), {kw})",
             "    emb = out[0]"]
    if net.get("mask_index") is not None:
        lines += [f"    n = out[{net['mask_index']}].bool().sum(1).clamp_min(1)  # valid tokens",
                  "    mask = torch.arange(int(n.max()), device=DEVICE)[None] < n[:, None]",
                  "    emb = emb[:, : mask.shape[1]] * mask[..., None]  # cut and zero-padded"]
    else:
        lines.append("    mask = torch.ones(emb.shape[:2], dtype=torch.bool, device=DEVICE)")
    pooled = "None" if net.get("pooled_index") is None else f"out[{net['pooled_index']}]"
    lines.append(f"    return emb, mask, {pooled}")
    return lines


def _call_lines(info: dict[str, Any]) -> list[str]:
    """``call(net, x, t, cond) -> out``: the family's call signature (see
    :data:`fewstep.teachers.diffusers.families.FAMILIES`), ``x`` and ``t`` in the network's
    dtype, ``out`` the network's own prediction shaped like ``x``."""
    cls = info["network"]["class"]
    head = ["def call(net, x, t, cond):", "    emb, mask, pooled = cond"]
    if cls == "UNet2DConditionModel":
        return [*head, "    return net(x, t, encoder_hidden_states=emb.to(net.dtype), "
                "return_dict=False)[0]"]
    if cls == "PixArtTransformer2DModel":
        return [*head,
                "    out = net(x, encoder_hidden_states=emb.to(net.dtype), "
                "encoder_attention_mask=mask.long(), timestep=t,",
                '              added_cond_kwargs={"resolution": None, "aspect_ratio": None}, '
                "return_dict=False)[0]",
                "    return out[:, : x.shape[1]]  # learned variance: keep the mean prediction"]
    if cls == "FluxTransformer2DModel":
        g = info["network"].get("guidance")
        guidance = "None" if g is None else \
            f"torch.full((b,), {float(g)!r}, device=DEVICE, dtype=torch.float32)"
        return [*head,
                "    b, c, h, w = x.shape  # 2x2 patches -> tokens, Flux's position ids",
                "    tokens = x.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)"
                ".reshape(b, h * w // 4, c * 4)",
                "    ids = torch.zeros(h // 2, w // 2, 3, device=DEVICE, dtype=x.dtype)",
                "    ids[..., 1] = torch.arange(h // 2, device=DEVICE, dtype=x.dtype)[:, None]",
                "    ids[..., 2] = torch.arange(w // 2, device=DEVICE, dtype=x.dtype)[None, :]",
                "    txt_ids = torch.zeros(emb.shape[1], 3, device=DEVICE, dtype=x.dtype)",
                f"    out = net(hidden_states=tokens, timestep=t, guidance={guidance},",
                "              pooled_projections=pooled.to(net.dtype), "
                "encoder_hidden_states=emb.to(net.dtype),",
                "              txt_ids=txt_ids, img_ids=ids.reshape(-1, 3), return_dict=False)[0]",
                "    return out.view(b, h // 2, w // 2, c, 2, 2).permute(0, 3, 1, 4, 2, 5)"
                ".reshape(b, c, h, w)"]
    raise ValueError(f"no loading snippet for denoiser {cls!r}")


def _generic_snippet(info: dict[str, Any], folder: str) -> list[str]:
    """Family ``diffusers``: the teacher's own pipeline class (VAE, text encoders) with the
    student's networks, and the student's sampler around the network's raw call."""
    k_steps, lora = info["num_steps"], info["parameterization"] == "lora"
    net = info["network"]
    cls, pcls, comp = net["class"], info["pipeline_class"], info["component"]
    pdt, sdt = _dtype(info["dtypes"]["pipeline"]), _dtype(info["dtypes"]["denoiser"])
    lines = ["import torch", f"from diffusers import {pcls}, {cls}"]
    if lora:
        lines = ["import json", "", *lines, "from peft import LoraConfig, inject_adapter_in_model",
                 "from peft.tuners.tuners_utils import BaseTunerLayer",
                 "from safetensors.torch import load_file"]
    lines += ["", *_header(info, folder),
              f"TIMES = torch.tensor({_floats(net['timesteps'])})  # the network's time input "
              "of each step", ""]
    if lora:
        lines += [f'net = {cls}.from_pretrained(BASE, subfolder="{comp}", dtype={sdt}, '
                  "use_safetensors=True).to(DEVICE)",
                  f"pipe = {pcls}.from_pretrained(BASE, {comp}=net, dtype={pdt}, "
                  "use_safetensors=True).to(DEVICE)",
                  f"for k in range({k_steps}):",
                  '    config = json.load(open(f"{FOLDER}/step{k}/adapter_config.json"))',
                  '    inject_adapter_in_model(LoraConfig(**config), net, adapter_name=f"step{k}")',
                  *_lora_restore("net", "k"), "", "",
                  "def use_step(k):",
                  "    for m in net.modules():",
                  "        if isinstance(m, BaseTunerLayer):",
                  '            m.set_adapter(f"step{k}")',
                  "    return net"]
    else:
        folders = info["step_subfolders"]
        lines += [f"STEP_FOLDERS = {folders!r}",
                  f"nets = {{f: {cls}.from_pretrained(FOLDER, subfolder=f, dtype={sdt}, "
                  "use_safetensors=True).to(DEVICE)",
                  "        for f in dict.fromkeys(STEP_FOLDERS)}",
                  f"pipe = {pcls}.from_pretrained(FOLDER, {comp}=nets[{folders[0]!r}], "
                  f"dtype={pdt}, use_safetensors=True).to(DEVICE)", "", "",
                  "def use_step(k):", "    return nets[STEP_FOLDERS[k]]"]
    lines += ["", "", *_encode_lines(info), "", "", *_call_lines(info)]
    vp = net["path"] == "vp"
    if vp:
        x0 = {"epsilon": f"x0 = (x - s * out) / (1 - s).clamp_min({net['min_one_minus_sigma']!r})",
              "sample": "x0 = out",
              "v_prediction": "x0 = ab.sqrt() * x * c_in - (1 - ab).sqrt() * out  # ab = "
                              "alpha_bar"}[net["prediction_type"]]
        step = ["        a, c_in = 1 - s, ((1 - s) ** 2 + s ** 2).rsqrt()  # flow -> VP input",
                "        ab = a * a / (a * a + s * s)  # the VP level of sigma",
                "        out = call(net, (x * c_in).to(net.dtype), t.expand(len(x)).to(net.dtype),"
                " cond).to(x.dtype)"]
    else:
        x0 = "x0 = x - s * out  # out = velocity eps - x0"
        step = ["        out = call(net, x.to(net.dtype), t.expand(len(x)).to(net.dtype), cond)"
                ".to(x.dtype)"]
    if net.get("sign", 1.0) != 1.0:
        step.append(f"        out = {float(net['sign'])!r} * out")
    lines += [
        *_prompt_few_step_head(info, "    cond = encode(prompts)"),
        "    for k, (s, t) in enumerate(zip(SIGMAS, TIMES)):",
        "        net = use_step(k)  # step k's parameters",
        *step,
        f"        {x0}",
        *_TRANSITION,
        "    vae = pipe.vae.config",
        "    z = x0.to(pipe.vae.dtype) / vae.scaling_factor + (vae.shift_factor or 0.0)",
        "    return pipe.vae.decode(z).sample, x0",
    ]
    return lines


def loading_snippet(info: dict[str, Any], folder: str) -> str:
    """Python source that loads the export at ``folder`` and defines ``few_step`` (module
    docstring). Imports diffusers, torch, safetensors (and peft for a LoRA UNet) only.
    (Z-Image's ``encode_prompt`` rewrites the list it is given in place, hence the copies.)"""
    family = info["family"]
    if family == "zimage":
        lines = _zimage_snippet(info, folder)
    elif family == "unet_eps":
        lines = _unet_snippet(info, folder)
    elif family == "diffusers":
        lines = _generic_snippet(info, folder)
    else:
        raise ValueError(f"no loading snippet for family {family!r}")
    return "\n".join(lines) + "\n"


def usage_line(info: dict[str, Any]) -> str:
    if info["family"] in ("zimage", "diffusers"):
        return 'images, latents = few_step(["a red fox in the snow"], seed=0)  # [-1, 1]'
    return "images, _ = few_step([0, 1, 2, 3], seed=0)  # class labels -> images in [-1, 1]"


def stock_snippet(info: dict[str, Any]) -> str:
    """For ``ddim`` Z-Image students: the stock ``ZImagePipeline`` runs the same K steps (its
    Euler step is the deterministic transition); defines ``stock_few_step`` -> latents. Runs
    after :func:`loading_snippet`. Empty for other students."""
    if info["transition"] != "ddim" or info["family"] != "zimage":
        return ""
    _, h, w = info["latent_shape"]
    f = info["vae_factor"]
    return "\n".join([
        "from diffusers import FlowMatchEulerDiscreteScheduler",
        "",
        "# the student's sigmas are already shifted: a shift-1 scheduler passes them unchanged",
        "pipe.scheduler = FlowMatchEulerDiscreteScheduler.from_config(",
        "    pipe.scheduler.config, shift=1.0, use_dynamic_shifting=False)",
        "",
        "",
        "def next_step(pipe, i, t, kwargs):  # step i + 1's parameters",
        f"    if i + 1 < {info['num_steps']}:",
        "        pipe.transformer = use_step(i + 1)",
        "    return kwargs",
        "",
        "",
        f"def stock_few_step(prompts, seed=0, height={h * f}, width={w * f}):",
        "    pipe.transformer = use_step(0)",
        "    return pipe(list(prompts), height=height, width=width, sigmas=SIGMAS.tolist(), "
        "guidance_scale=0.0,",
        f"                max_sequence_length={info['max_sequence_length']}, "
        "output_type=\"latent\", callback_on_step_end=next_step,",
        "                generator=torch.Generator().manual_seed(seed)).images",
    ]) + "\n"


def stock_pipeline_note(info: dict[str, Any]) -> str:
    """The model card section around :func:`stock_snippet` (empty if there is none)."""
    code = stock_snippet(info)
    if not code:
        return ""
    return ("### Stock pipeline (deterministic transition)\n\n"
            "This student uses the deterministic (ddim = Euler on the linear path) transition, "
            "so the stock `ZImagePipeline` runs it too: a `FlowMatchEulerDiscreteScheduler` "
            f"with `shift=1.0` and the student's sigmas `{_floats(info['sigmas'])}` (the "
            "scheduler appends the final 0), switching the step parameters in "
            "`callback_on_step_end`. After the snippet above:\n\n"
            f"```python\n{code}```\n\n"
            "It returns the latents of `few_step(prompts, seed)` up to float rounding (the "
            "pipeline passes the timestep as `1000 sigma` and divides it again by 1000).\n\n")


def model_card(info: dict[str, Any], folder: str) -> str:
    """``README.md``: what the student is and the exact loading snippet."""
    t = info.get("teacher", {})
    run = info.get("run", {})
    s = run.get("student", {})
    lines = [
        f"# {info['num_steps']}-step student of {t.get('pretrained', t.get('kind', '?'))}", "",
        "Distilled with fewstep. Loading it needs only diffusers "
        "(and torch, safetensors" + (", peft" if info["parameterization"] == "lora" else "")
        + "); fewstep is not required.", "",
        "| | |", "|---|---|",
        f"| teacher | `{t.get('kind')}` `{t.get('pretrained')}` ({t.get('dtype', '?')}) |",
        f"| recipe | `{run.get('method', '?')}` |",
        f"| parameterization | `{info['parameterization']}`"
        + (f" (rank {info['lora']['rank']}, alpha {info['lora']['alpha']:g})"
           if info["parameterization"] == "lora" else "") + " |",
        f"| transition | `{info['transition']}` |",
        f"| steps | {info['num_steps']} |",
        f"| sigmas (input noise level per step, 1 = noise) | `{_floats(info['sigmas'])}` |",
    ]
    if info["family"] == "unet_eps":
        lines.append(f"| UNet timesteps | `{_floats(info['unet']['timesteps'])}` |")
    if info["family"] == "diffusers":
        net = info["network"]
        pred = net.get("prediction_type", "velocity")
        lines += [f"| pipeline / network | `{info['pipeline_class']}` / `{net['class']}` "
                  f"({net['path']}, predicts `{pred}`) |",
                  f"| network time input per step | `{_floats(net['timesteps'])}` |"]
    lines.append(f"| base | `{info['base']['source']}` (copied: {info['base']['copied']}) |")
    if s:
        switches = {k: v for k, v in s.items() if v is not None}
        lines.append(f"| student switches | `{json.dumps(switches, sort_keys=True)}` |")
    for key, val in (run.get("recipe") or {}).items():
        lines.append(f"| {key} | `{json.dumps(val, sort_keys=True, default=str)}` |")
    lines += ["", "## Metrics", ""]
    metrics = info.get("metrics") or {}
    if metrics:
        lines += ["```json", json.dumps(metrics, indent=1, sort_keys=True, default=str), "```"]
    else:
        lines.append("No metrics were recorded in the run folder.")
    lines += ["", "## Load and sample", "",
              "```python", loading_snippet(info, folder).rstrip(), "", "",
              usage_line(info), "```", "",
              "`use_step(k)` returns the network with step k's parameters; `few_step` runs the "
              f"{info['num_steps']} steps with the `{info['transition']}` transition "
              "(`fresh`: x = (1 - s') x0 + s' noise with new noise; `ddim`: the noise "
              "predicted at this step is reused). Run on a GPU with `DEVICE = \"cuda\"`.", "",
              stock_pipeline_note(info),
              "## Files", "", "See `fewstep_student.json` for every setting in machine-readable "
              "form."]
    return "\n".join(lines) + "\n"


def snippet_from_card(text: str, which: int = 0) -> str:
    """The ``which``-th python code block of a model card (what the tests run)."""
    blocks = text.split("```python\n")[1:]
    return blocks[which][:blocks[which].index("```")]


__all__ = ["loading_snippet", "model_card", "snippet_from_card", "stock_pipeline_note",
           "stock_snippet"]
