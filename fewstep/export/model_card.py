"""The model card (``README.md``) of an exported diffusers-format student, with its sampling code.

The code is plain diffusers (+ torch, safetensors; peft for LoRA students) and defines
``few_step``:

* family ``pipeline`` (any text-to-image pipeline teacher): the teacher's own pipeline class
  runs the student through its own ``__call__`` -- its prompt encoding, latent preparation,
  time-input map and decoding, at the teacher's call arguments with guidance off -- with
  :class:`~fewstep.export.student_scheduler.StudentScheduler` (its source is written into the
  card) as ``pipe.scheduler``: it performs the student's transition at the student's levels
  and switches the step's network / LoRA adapter (``use_step(k)``). ``few_step(prompts,
  seed)`` returns images in ``[0, 1]``. No per-family code.
* family ``unet_eps`` (a class-conditional VP UNet): the student's K steps around the UNet's
  call; ``few_step(labels, seed)`` returns ``(images, x0)`` in ``[-1, 1]``.

From the same seed the code computes what ``fewstep sample --student FOLDER``
(:class:`~fewstep.export.student_pipeline.StudentPipeline`) computes: the first noise and one
fresh noise per transition from ``torch.Generator().manual_seed(seed)`` on the CPU, drawn as the
pipeline draws them.

``info`` is the content of ``fewstep_student.json`` (see :mod:`fewstep.export.diffusers_export`).
"""

from __future__ import annotations

import inspect
import json
from typing import Any


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


def _header(info: dict[str, Any], folder: str, tensor: bool = True) -> list[str]:
    lines = [f"FOLDER = {folder!r}  # this export"]
    if info["parameterization"] == "lora" and info["base"]["copied"]:
        lines.append("BASE = FOLDER  # the frozen base is copied into this export")
    elif info["parameterization"] == "lora":
        lines.append(f"BASE = {info['base']['source']!r}  # the frozen base (hub id or folder)")
    sigmas = f"torch.tensor({_floats(info['sigmas'])})" if tensor else _floats(info["sigmas"])
    lines += ['DEVICE = "cpu"',
              f"SIGMAS = {sigmas}  # input noise level of each step (1 = pure noise)"]
    return lines


#: ``few_step``'s transition to the next level: fresh re-noising or the deterministic (ddim) step
_TRANSITION = [
    "        if k + 1 < len(SIGMAS):  # fresh re-noising or the deterministic (ddim) step",
    "            eps = torch.randn(x.shape, generator=g).to(DEVICE) if transition == "
    '"fresh" else (x - (1 - s) * x0) / s',
    "            x = (1 - SIGMAS[k + 1]) * x0 + SIGMAS[k + 1] * eps",
]


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


def _pipeline_snippet(info: dict[str, Any], folder: str) -> list[str]:
    """Family ``pipeline``: the teacher's own pipeline class runs the student's steps through
    its own ``__call__``; :class:`~fewstep.export.student_scheduler.StudentScheduler` (its
    source written out) takes the student's transition and switches the step's parameters."""
    k_steps, lora = info["num_steps"], info["parameterization"] == "lora"
    pcls, ncls, comp = info["pipeline_class"], info["network_class"], info["component"]
    pdt, sdt = _dtype(info["dtypes"]["pipeline"]), _dtype(info["dtypes"]["denoiser"])
    sch = info["scheduler"]
    lines = (["import json"] if lora else []) + ["from typing import Any", "",
        "import torch", f"from diffusers import {pcls}, {ncls}",
        "from diffusers.configuration_utils import ConfigMixin, register_to_config",
        "from diffusers.schedulers.scheduling_utils import SchedulerMixin, SchedulerOutput"]
    if lora:
        lines += ["from peft import LoraConfig, inject_adapter_in_model",
                  "from peft.tuners.tuners_utils import BaseTunerLayer",
                  "from safetensors.torch import load_file"]
    call = {**info["call"], **info["sampling_call"]}
    lines += ["", *_header(info, folder, tensor=False),
              f"TIMES = {_floats(sch['times'])}  # the scheduler's time of each level",
              f"CALL = {call!r}  # __call__ arguments (as the teacher was read; no guidance)",
              f"ATTRIBUTES = {info['attributes']!r}  # pipeline attributes it does not save",
              "", "", *_student_scheduler_source(), "", ""]
    if lora:
        lines += [f'net = {ncls}.from_pretrained(BASE, subfolder="{comp}", dtype={sdt}, '
                  "use_safetensors=True).to(DEVICE)",
                  f"pipe = {pcls}.from_pretrained(BASE, {comp}=net, dtype={pdt}, "
                  "use_safetensors=True).to(DEVICE)",
                  f"for k in range({k_steps}):",
                  '    config = json.load(open(f"{FOLDER}/step{k}/adapter_config.json"))',
                  '    inject_adapter_in_model(LoraConfig(**config), net, adapter_name=f"step{k}")',
                  *_lora_restore("net", "k"), "", "",
                  "def use_step(k):  # step k's parameters",
                  "    for m in net.modules():",
                  "        if isinstance(m, BaseTunerLayer):",
                  '            m.set_adapter(f"step{k}")']
    else:
        folders = info["step_subfolders"]
        lines += [f"STEP_FOLDERS = {folders!r}",
                  f"nets = {{f: {ncls}.from_pretrained(FOLDER, subfolder=f, dtype={sdt}, "
                  "use_safetensors=True).to(DEVICE)",
                  "        for f in dict.fromkeys(STEP_FOLDERS)}",
                  f"pipe = {pcls}.from_pretrained(FOLDER, {comp}=nets[{folders[0]!r}], "
                  f"dtype={pdt}, use_safetensors=True).to(DEVICE)", "", "",
                  "def use_step(k):  # step k's network",
                  f"    pipe.{comp} = nets[STEP_FOLDERS[k]]"]
    lines += [
        "", "", "for name, value in ATTRIBUTES.items():", "    setattr(pipe, name, value)",
        "", "", "@torch.no_grad()",
        f"def few_step(prompts, seed=0, height={info['height']}, width={info['width']}):",
        "    g = torch.Generator().manual_seed(seed)  # first noise, then one per transition",
        f"    pipe.scheduler = StudentScheduler(SIGMAS, TIMES, vp={sch['vp']!r}, "
        f"prediction={sch['prediction']!r},",
        f"                                      transition={sch['transition']!r}, "
        f"min_one_minus_sigma={sch['min_one_minus_sigma']!r},",
        f"                                      num_train_timesteps="
        f"{sch['num_train_timesteps']!r})",
        "    pipe.scheduler.generator, pipe.scheduler.on_step = g, use_step",
        "    images = pipe(prompt=list(prompts), height=height, width=width, "
        "num_inference_steps=len(SIGMAS),",
        '                  generator=g, output_type="np", **CALL).images  # (B, H, W, 3)',
        "    return torch.from_numpy(images).permute(0, 3, 1, 2)",
    ]
    return lines


def _student_scheduler_source() -> list[str]:
    """The source of :class:`~fewstep.export.student_scheduler.StudentScheduler`."""
    from fewstep.export.student_scheduler import StudentScheduler

    return inspect.getsource(StudentScheduler).rstrip().splitlines()


def loading_snippet(info: dict[str, Any], folder: str) -> str:
    """Python source that loads the export at ``folder`` and defines ``few_step`` (module
    docstring). Imports diffusers, torch, safetensors (and peft for LoRA) only."""
    family = info["family"]
    if family == "unet_eps":
        lines = _unet_snippet(info, folder)
    elif family == "pipeline":
        lines = _pipeline_snippet(info, folder)
    else:
        raise ValueError(f"no sampling code for family {family!r}")
    return "\n".join(lines) + "\n"


def usage_line(info: dict[str, Any]) -> str:
    if info["family"] == "pipeline":
        return 'images = few_step(["a red fox in the snow"], seed=0)  # (B, 3, H, W) in [0, 1]'
    return "images, _ = few_step([0, 1, 2, 3], seed=0)  # class labels -> images in [-1, 1]"


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
    if info["family"] == "pipeline":
        sch = info["scheduler"]
        lines += [f"| pipeline / network | `{info['pipeline_class']}` / `{info['network_class']}` "
                  f"({'vp' if sch['vp'] else 'flow'} path, predicts `{sch['prediction']}`) |",
                  f"| scheduler time per step | `{_floats(sch['times'])}` |"]
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
              "`use_step(k)` switches to step k's parameters; `few_step` runs the "
              f"{info['num_steps']} steps with the `{info['transition']}` transition "
              "(`fresh`: x = (1 - s') x0 + s' noise with new noise; `ddim`: the noise "
              "predicted at this step is reused). Run on a GPU with `DEVICE = \"cuda\"`.", "",
              "## Files", "", "See `fewstep_student.json` for every setting in machine-readable "
              "form."]
    return "\n".join(lines) + "\n"


def snippet_from_card(text: str, which: int = 0) -> str:
    """The ``which``-th python code block of a model card (what the tests run)."""
    blocks = text.split("```python\n")[1:]
    return blocks[which][:blocks[which].index("```")]


__all__ = ["loading_snippet", "model_card", "snippet_from_card", "usage_line"]
