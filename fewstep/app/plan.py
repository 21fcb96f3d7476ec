"""``fewstep plan``: parameter counts and a per-GPU memory estimate, before renting machines.

Every model of the recipe (teacher, student for its parameterization, EMA, discriminator heads,
fake score network) is built on the **meta** device from configs only: a ``file`` teacher from
its stored config (metadata, no tensors read), a ``zimage`` / ``unet_eps`` teacher from the
``config.json`` files of its folder (``from_config``; no weights loaded). Offline, a hub id the
project ships configs for (``fewstep/assets/configs/index.json``) needs nothing else; another
hub id is read from the local Hugging Face cache only (never downloaded).

Memory per GPU (bytes) for ``N`` data-parallel processes (see
:mod:`fewstep.distill.engine.distributed`):

* weights: the frozen teacher in ``teacher.dtype`` (replicated); what the student *owns* --
  parameters that are not the teacher's own tensors, counted by identity, so a LoRA student that
  runs its base through the teacher's weights adds only its adapters -- trainables in float32,
  a frozen base copy in ``teacher.dtype``; a diffusers pipeline's VAE (kept on the device to
  decode samples; the text encoder is moved to the CPU once the prompt cache exists);
* grads: float32, one per trainable parameter; Adam: two float32 moments per trainable
  parameter; EMA: a copy of what the student owns;
* FSDP (``train.distributed: fsdp``) divides what the student owns (weights, grads, moments),
  the EMA and the fake score network by ``N`` and adds the gathered blocks (two of the largest
  block, for prefetching); the teacher -- and a LoRA base that is the teacher's weights -- and
  the small heads stay replicated;
* activations: an **estimate**. Per sample and per transformer block, ``34 T h`` bytes at 16-bit
  (``T`` tokens, ``h`` hidden size; the flash-attention case of Korthikanti et al. 2022,
  "Reducing Activation Recomputation in Large Transformer Models"), doubled at float32. With
  block-level gradient checkpointing only each block's input (``2 T h`` bytes) is kept plus one
  block's activations during recomputation. Multiplied by the number of network forwards whose
  graph a generator loss keeps (e.g. Turbo++ end-to-end: the K student steps plus the teacher's
  features for the GAN) and by the per-rank batch ``train.batch_size / N``. For networks other
  than transformers (ResMLP, UNet) ``T`` and ``h`` are coarse proxies (see
  :func:`activation_shape`);
* data: one per-GPU batch of teacher-cache rows and prompt embeddings (the caches stay on the
  host, memory-mapped; see :mod:`fewstep.distill.engine.teacher_cache`).

Host / disk figures are listed separately: the teacher-sample cache (disk, read through the
page cache), the prompt-embedding cache and the text encoder (host RAM).

Not included: the CUDA context and allocator slack (add 1-3 GB). ``benchmarks/memory.py``
compares these figures with measured peaks of a mid-size Z-Image-shaped model on CPU.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fewstep.app.plan_activations import generic_activation_shape, measured_activations
from fewstep.app.plan_models import (
    lora_student_parts,
    meta_models,
    owned,
    param_counts,
    pipeline_parts,
)
from fewstep.data.prompts import read_prompts
from fewstep.distill.config import DistillConfig
from fewstep.distill.methods.base import DistillMethod
from fewstep.distill.methods.registry import method_class
from fewstep.errors import ConfigError

GB = 1024 ** 3
_DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


@dataclass
class ModelCount:
    """Parameter counts of one model of the recipe."""

    name: str
    total: int
    trainable: int
    note: str = ""


@dataclass
class MemoryRow:
    """Estimated bytes per GPU for one setting."""

    fsdp: bool
    lora: bool
    grad_ckpt: bool
    weights: float
    grads: float
    adam: float
    ema: float
    activations: float
    total: float
    data: float = 0.0
    configured: bool = False
    supported: bool = True
    fits: bool | None = None


@dataclass
class Plan:
    method: str
    gpus: int
    per_gpu_batch: int
    teacher: str
    models: list[ModelCount]
    rows: list[MemoryRow]
    activation_basis: dict[str, Any] = field(default_factory=dict)
    gpu_memory_gb: float | None = None
    global_batch: int = 0
    notes: list[str] = field(default_factory=list)
    host: dict[str, float] = field(default_factory=dict)
    max_per_gpu_batch: int | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


# --------------------------------------------------------------------------------------------
# Models on the meta device
# --------------------------------------------------------------------------------------------
def zimage_caption_tokens(cfg: DistillConfig) -> int:
    """``teacher.max_sequence_length``, else ``ZImagePipeline.__call__``'s default (512)."""
    return cfg.teacher.max_sequence_length or 512


def activation_shape(den: nn.Module, shape: tuple[int, ...], cfg: DistillConfig
                     ) -> dict[str, Any]:
    """``{"tokens", "hidden", "blocks", "basis"}`` used by the activation estimate.

    Z-Image: image tokens ``(H/p)(W/p)`` + ``teacher.max_sequence_length`` caption tokens,
    ``dim``, ``n_layers + 2 n_refiner_layers`` blocks. ResMLP: 1 token, ``hidden``, ``depth``.
    Other networks: :func:`~fewstep.app.plan_activations.generic_activation_shape`.
    """
    tr = getattr(den, "transformer", None)
    if tr is not None and "all_patch_size" in tr.config:  # Z-Image
        c = tr.config
        p = int(c.all_patch_size[0])
        img = (shape[-2] // p) * (shape[-1] // p)
        seq = zimage_caption_tokens(cfg)
        return {"tokens": img + seq, "hidden": int(c.dim),
                "blocks": int(c.n_layers) + 2 * int(c.n_refiner_layers),
                "basis": f"{img} image + {seq} caption tokens"}
    net = getattr(den, "net", den)
    inp, blocks = getattr(net, "inp", None), getattr(net, "blocks", None)
    if inp is not None and blocks is not None:
        return {"tokens": 1, "hidden": int(inp.out_features), "blocks": len(blocks),
                "basis": "ResMLP: 1 token"}
    return generic_activation_shape(den, shape, zimage_caption_tokens(cfg))


def graph_forwards(cfg: DistillConfig) -> int:
    """Network forwards whose graph one generator loss keeps for backward (per sample): what
    the method declares (:meth:`DistillMethod.graph_forwards`); an unknown method is an error."""
    return method_class(cfg.method).graph_forwards(cfg)


def activation_bytes(act: dict[str, Any], per_gpu_batch: int, forwards: int, grad_ckpt: bool,
                     act_bytes: int) -> float:
    per_block = 34 * act["tokens"] * act["hidden"] * act_bytes / 2
    if grad_ckpt:
        per_fwd = act["blocks"] * act["tokens"] * act["hidden"] * act_bytes + per_block
    else:
        per_fwd = act["blocks"] * per_block
    return float(per_fwd * forwards * per_gpu_batch)


# --------------------------------------------------------------------------------------------
# The plan
# --------------------------------------------------------------------------------------------
def _largest_block(m: nn.Module) -> int:
    best = 0
    for sub in m.modules():
        if isinstance(sub, nn.ModuleList):
            for blk in sub:
                best = max(best, sum(p.numel() for p in blk.parameters()))
    return best


def per_gpu_batch(global_batch: int, gpus: int) -> tuple[int, str | None]:
    """``(per-GPU batch, note)``: ``global_batch / gpus``, or -- when it does not divide -- the
    smallest per-GPU batch covering it, with the ``train.batch_size`` to set."""
    if global_batch % gpus == 0:
        return global_batch // gpus, None
    per = -(-global_batch // gpus)
    return per, (f"train.batch_size {global_batch} (the global batch) is not divisible by "
                 f"{gpus} GPUs: planned with {per} per GPU; set train.batch_size={per * gpus}")


def _needs_cache(method: nn.Module) -> tuple[bool, bool]:
    """``(pairs, real)``: the recipe reads teacher pairs / "real" rows from the cache."""
    assert isinstance(method, DistillMethod)  # meta_models' "method"
    needs = method.data_needs()
    return bool(needs.teacher_pairs), needs.real == "teacher_cache"


def cache_figures(cfg: DistillConfig, method: nn.Module, shape: tuple[int, ...],
                  teacher: nn.Module, per_gpu: int) -> tuple[float, dict[str, float]]:
    """``(device bytes of one per-GPU batch of cache rows, host / disk figures)``."""
    pairs, real = _needs_cache(method)
    numel = math.prod(shape)
    host: dict[str, float] = {}
    device = 0.0
    if pairs or real:
        fields = 2 + (1 if cfg.student.num_steps > 1 else 0)  # eps, sample (, mid)
        entry = fields * numel * 4 + 8
        host["teacher_cache_disk"] = float(entry * cfg.cache.size)
        device += per_gpu * ((entry if pairs else 0) + (numel * 4 if real else 0))
    else:
        device += per_gpu * numel * 4  # fresh noise
    tr = getattr(teacher, "transformer", None)
    if tr is not None and hasattr(tr.config, "cap_feat_dim"):
        per_prompt = zimage_caption_tokens(cfg) * int(tr.config.cap_feat_dim) * \
            _DTYPE_BYTES[cfg.teacher.dtype]
        n = _prompt_count(cfg)
        host["prompt_cache_per_prompt"] = float(per_prompt)
        if n:
            host["prompt_cache"] = float(per_prompt * n)
        device += per_gpu * per_prompt * (2 if real else 1)
    return float(device), host


def _prompt_count(cfg: DistillConfig) -> int:
    """Prompts in ``teacher.prompts`` (0 when the file is not on this machine; a file that is
    not UTF-8 text, or not a regular file, is an error)."""
    p = cfg.teacher.prompts
    if p is None or not Path(p).expanduser().exists():
        return 0
    return len(read_prompts(Path(p).expanduser()))


def build_plan(cfg: DistillConfig, gpus: int, gpu_memory_gb: float | None = None) -> Plan:
    """Counts and the memory table for ``gpus`` data-parallel processes."""
    if gpus < 1:
        raise ConfigError("--gpus: must be >= 1")
    per_gpu, note = per_gpu_batch(cfg.train.batch_size, gpus)
    models, shape, info = meta_models(cfg)
    teacher, student, method = models["teacher"], models["student"], models["method"]
    t_total, _ = param_counts(teacher)
    shared = set(info.pop("_teacher_ids"))
    s_total, s_train = param_counts(student)
    s_frozen, _ = owned(student, shared)
    a_total, a_train = param_counts(method)
    fake = [m for m in method.modules() if type(m).__name__ == "FakeScore"]
    f_total = sum(param_counts(m)[0] for m in fake)
    base_note = "base = the teacher's weights" if cfg.student.parameterization == "lora" \
        and not s_frozen else ("own frozen base copy" if s_frozen else "")
    counts = [ModelCount("teacher", t_total, 0, f"frozen, {cfg.teacher.dtype}"),
              ModelCount("student", s_total, s_train,
                         f"{cfg.student.parameterization}, K={cfg.student.num_steps}"
                         + (f", {base_note}" if base_note else "")),
              ModelCount("ema", s_frozen + s_train, 0, "copy of what the student owns")]
    if f_total:
        counts.append(ModelCount("fake_score", f_total, f_total, "trainable teacher copy"))
    if a_total - f_total:
        counts.append(ModelCount("heads", a_total - f_total, a_train - f_total,
                                 "discriminator heads"))
    folder = info.get("config_folder")
    parts = pipeline_parts(folder) if folder else {"vae": 0, "text_encoder": 0}
    if parts["vae"]:
        counts.append(ModelCount("vae", parts["vae"], 0, "on the GPU (decodes samples)"))
    if parts["text_encoder"]:
        counts.append(ModelCount("text_encoder", parts["text_encoder"], 0,
                                 "host RAM once the prompt cache is built"))
    lora: tuple[int, int, int] | None
    if cfg.student.parameterization == "lora":
        lora = (s_total, s_frozen, s_train)
    else:
        lora = lora_student_parts(cfg, teacher)
    tb = _DTYPE_BYTES[cfg.teacher.dtype]
    act = activation_shape(teacher, shape, cfg)
    # plans are for GPUs: auto means bf16 there
    act_b = 4 if cfg.train.mixed_precision == "no" else 2
    fwd = graph_forwards(cfg)
    text = zimage_caption_tokens(cfg)
    saved = measured_activations(teacher, tuple(shape), text,
                                 torch.float32 if act_b == 4 else torch.bfloat16)
    if saved is not None:
        act = {"basis": f"measured on meta: what autograd saves, {saved.units} checkpointed "
                        f"units, {text} text tokens"}
    block = _largest_block(teacher)
    heads = a_total - f_total
    data, host = cache_figures(cfg, method, shape, teacher, per_gpu)
    if parts["text_encoder"]:
        host["text_encoder"] = float(parts["text_encoder"] * tb)
    fixed_extra = parts["vae"] * tb + data
    rows = []
    for fsdp in (False, True):
        for use_lora in (False, True):
            if use_lora and lora is None:
                continue
            for gc in (False, True):
                if use_lora:
                    assert lora is not None
                    _, own_frozen, st_train = lora
                elif cfg.student.parameterization == "lora":  # the decoupled alternative
                    own_frozen, st_train = 0, t_total * cfg.student.num_steps
                else:
                    own_frozen, st_train = s_frozen, s_train
                own_bytes = own_frozen * tb + st_train * 4
                shard = gpus if fsdp else 1
                # FSDP shards what the student owns (a LoRA base that *is* the teacher's
                # weights stays replicated with the teacher), its EMA and the fake score
                # network; the small heads stay replicated
                weights = t_total * tb + heads * 4 + (own_bytes + f_total * 4) / shard
                ema = own_bytes / shard
                train_params = st_train + f_total
                grads = (train_params / shard + heads) * 4
                adam = (train_params / shard + heads) * 8
                if fsdp:
                    weights += 2 * block * 4  # gathered blocks (prefetch)
                a = activation_bytes(act, per_gpu, fwd, gc, act_b) if saved is None else \
                    (saved.checkpointed if gc else saved.full) * fwd * per_gpu
                total = weights + grads + adam + ema + a + fixed_extra
                rows.append(MemoryRow(
                    fsdp, use_lora, gc, weights, grads, adam, ema, a, total, fixed_extra,
                    configured=(fsdp == (cfg.train.distributed == "fsdp" and gpus > 1)
                                and use_lora == (cfg.student.parameterization == "lora")
                                and gc == cfg.train.gradient_checkpointing),
                    fits=None if gpu_memory_gb is None else total <= gpu_memory_gb * GB))
    notes = [note] if note else []
    best = None
    if gpu_memory_gb is not None:
        mine = next((r for r in rows if r.configured), None)
        if mine is not None and mine.activations > 0:
            per_sample = mine.activations / per_gpu
            room = gpu_memory_gb * GB - (mine.total - mine.activations)
            best = max(0, int(room // per_sample))
            notes.append(f"largest per-GPU batch that fits {gpu_memory_gb:g} GiB with this "
                         f"config: {best}" + (f" (train.batch_size={best * gpus})" if best
                                                else " (does not fit even at batch 1)"))
    return Plan(cfg.method, gpus, per_gpu, json.dumps(info), counts, rows,
                {**act, "graph_forwards": fwd, "bytes_per_value": act_b}, gpu_memory_gb,
                per_gpu * gpus, notes, host, best)


def _fmt_n(n: int) -> str:
    for unit, div in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= div:
            return f"{n / div:.2f}{unit}"
    return str(n)


def _gb(b: float) -> str:
    return f"{b / GB:.2f}" if b < 10 * GB else f"{b / GB:.1f}"


def format_plan(plan: Plan) -> str:
    """The human-readable tables."""
    lines = [f"method {plan.method}, {plan.gpus} GPU(s), per-GPU batch {plan.per_gpu_batch} "
             f"(global {plan.global_batch})", "",
             f"{'model':<14}{'total':>10}{'trainable':>11}  note"]
    for m in plan.models:
        lines.append(f"{m.name:<14}{_fmt_n(m.total):>10}{_fmt_n(m.trainable):>11}  {m.note}")
    ab = plan.activation_basis
    shape = f", hidden {ab['hidden']}, {ab['blocks']} blocks" if "hidden" in ab else ""
    lines += ["", f"estimated memory per GPU (GiB); activations are "
              f"{'a rough estimate' if shape else 'an estimate'} "
              f"({ab['basis']}{shape}, "
              f"{ab['graph_forwards']} graph forward(s) per loss); data = VAE + one batch of "
              f"cache rows",
              f"{'fsdp':<6}{'lora':<6}{'ckpt':<6}{'weights':>9}{'grads':>9}{'adam':>9}"
              f"{'ema':>9}{'activ.':>9}{'data':>7}{'total':>9}  "]
    for r in plan.rows:
        flag = " *" if r.configured else ""
        note = "" if r.supported else "  (unsupported)"
        if r.fits is not None and r.supported:
            note += "  fits" if r.fits else "  too big"
        yn = {True: "yes", False: "no"}
        lines.append(f"{yn[r.fsdp]:<6}{yn[r.lora]:<6}{yn[r.grad_ckpt]:<6}{_gb(r.weights):>9}"
                     f"{_gb(r.grads):>9}{_gb(r.adam):>9}{_gb(r.ema):>9}"
                     f"{_gb(r.activations):>9}{_gb(r.data):>7}{_gb(r.total):>9}{flag}{note}")
    lines.append("* = this config. Not included: CUDA context / allocator slack (1-3 GB).")
    if plan.host:
        h = plan.host
        host = []
        if "teacher_cache_disk" in h:
            host.append(f"teacher-sample cache {_gb(h['teacher_cache_disk'])} GiB on disk "
                        "(memory-mapped, read per batch)")
        if "prompt_cache" in h:
            host.append(f"prompt cache {h['prompt_cache'] / 2**20:.1f} MiB")
        elif "prompt_cache_per_prompt" in h:
            host.append(f"prompt cache {h['prompt_cache_per_prompt'] / 2**20:.1f} MiB per "
                        "prompt at most (prompt file not readable here)")
        if "text_encoder" in h:
            host.append(f"text encoder {_gb(h['text_encoder'])} GiB RAM")
        lines.append("host: " + "; ".join(host))
    lines += [f"note: {n}" for n in plan.notes]
    return "\n".join(lines)


__all__ = ["MemoryRow", "ModelCount", "Plan", "activation_shape", "build_plan",
           "format_plan", "meta_models", "zimage_caption_tokens"]
