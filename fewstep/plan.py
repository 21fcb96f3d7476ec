"""``fewstep plan``: parameter counts and a per-GPU memory estimate, before renting machines.

Every model of the recipe (teacher, student for its parameterization, EMA, discriminator heads,
fake score network) is built on the **meta** device from configs only: a ``file`` teacher from
its stored config (metadata, no tensors read), a ``zimage`` / ``unet_eps`` teacher from the
``config.json`` files of its folder (``from_config``; nothing downloaded, no weights loaded: a
folder holding only ``transformer/config.json`` and ``vae/config.json`` is enough).

Memory per GPU (bytes) for ``N`` data-parallel processes (see :mod:`fewstep.distill.distributed`):

* weights: the frozen teacher in ``teacher.dtype`` (replicated); trainable networks in float32;
  a LoRA student's frozen base in ``teacher.dtype``;
* grads: float32, one per trainable parameter; Adam: two float32 moments per trainable
  parameter; EMA: a copy of the whole student (its trainable weights in float32);
* FSDP (``train.distributed: fsdp``) divides the student's, EMA's and fake score network's
  weights, grads and moments by ``N`` and adds the gathered blocks (two of the largest block, for
  prefetching); the teacher and the small heads stay replicated;
* activations: an **estimate**. Per sample and per transformer block, ``34 T h`` bytes at 16-bit
  (``T`` tokens, ``h`` hidden size; the flash-attention case of Korthikanti et al. 2022,
  "Reducing Activation Recomputation in Large Transformer Models"), doubled at float32. With
  block-level gradient checkpointing only each block's input (``2 T h`` bytes) is kept plus one
  block's activations during recomputation. Multiplied by the number of network forwards whose
  graph a generator loss keeps (e.g. Turbo++ end-to-end: the K student steps plus the teacher's
  features for the GAN) and by the per-rank batch ``train.batch_size / N``. For networks other
  than transformers (ResMLP, UNet) ``T`` and ``h`` are coarse proxies (see
  :func:`activation_shape`).

Not included: the CUDA context and allocator slack (add 1-3 GB), the VAE / text encoder of a
diffusers pipeline (the trainer caches prompt embeddings and decodes only for samples), and the
teacher cache.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from fewstep.distill.config import DistillConfig
from fewstep.distill.methods import DistillContext
from fewstep.distill.methods.registry import method_class
from fewstep.distill.student_factory import student_from_spec
from fewstep.errors import ConfigError
from fewstep.teachers import meta_teacher as registry_meta_teacher

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

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


# --------------------------------------------------------------------------------------------
# Models on the meta device
# --------------------------------------------------------------------------------------------
def meta_teacher(cfg: DistillConfig) -> tuple[nn.Module, tuple[int, ...], int, dict[str, Any]]:
    """``(teacher on meta, sample shape, num_classes, info)`` from configs only (the teacher
    registry's adapter for ``teacher.kind``)."""
    m = registry_meta_teacher(cfg)
    return m.module, tuple(m.data_shape), m.num_classes, m.info


def _fake_features(den: nn.Module, shape: tuple[int, ...]) -> None:
    """Give a meta teacher a ``features`` that returns meta tensors of the right widths (a
    meta forward of a diffusers transformer is not possible with prompt embeddings)."""
    dims = feature_widths(den)
    if dims is None:
        return

    def features(x: torch.Tensor, sigma: Any, cond: Any = None) -> list[torch.Tensor]:
        return [torch.empty((x.shape[0], d), device="meta") for d in dims]

    den.features = features  # type: ignore[method-assign]


def feature_widths(den: nn.Module) -> list[int] | None:
    """Width of each of ``den.features`` where known from the architecture."""
    if hasattr(den, "feature_widths"):  # the generic diffusers denoisers say it themselves
        return list(den.feature_widths())
    tr = getattr(den, "transformer", None)
    if tr is not None and hasattr(den, "feature_layers"):
        return [int(tr.config.dim)] * len(den.feature_layers)
    net = getattr(den, "net", None)
    if net is not None and hasattr(net, "blocks") and hasattr(net, "inp"):  # ResMLP
        return [int(net.inp.out_features)] * (len(net.blocks) + 1)
    return None


def meta_models(cfg: DistillConfig) -> tuple[dict[str, nn.Module], tuple[int, ...], dict]:
    """Teacher, student, EMA (= student) and the recipe's aux modules, all on meta."""
    from fewstep.data.problem import Problem
    from fewstep.schedules import student_sigmas

    teacher, shape, ncls, info = meta_teacher(cfg)
    teacher.requires_grad_(False)
    _fake_features(teacher, shape)
    s = cfg.student
    sig = student_sigmas(s.num_steps, cfg.teacher.steps, cfg.teacher.shift or 1.0, s.sigmas)
    with torch.device("meta"):  # new modules (LoRA adapters, heads) on meta too
        student = student_from_spec(teacher, s, sig)  # type: ignore[arg-type]
    if s.parameterization != "lora":
        for p in student.parameters():
            p.requires_grad_(True)
    problem = Problem(cfg.data, shape, ncls)
    example = torch.empty((2, *shape), device="meta")
    ctx = DistillContext(cfg, problem, teacher, 1.0, student, torch.device("meta"),  # type: ignore
                         torch.Generator(), example, None)
    with torch.device("meta"):
        method = method_class(cfg.method)(ctx)
    return {"teacher": teacher, "student": student, "method": method}, shape, info


def _count(m: nn.Module) -> tuple[int, int]:
    total = sum(p.numel() for p in m.parameters())
    return total, sum(p.numel() for p in m.parameters() if p.requires_grad)


def lora_student_count(cfg: DistillConfig, teacher: nn.Module) -> tuple[int, int]:
    """``(total, trainable)`` of the same student with ``parameterization: lora``."""
    from fewstep.distill.student import Student, resolve_lora_targets
    from fewstep.lora import find_lora_targets

    s = cfg.student
    try:
        find_lora_targets(teacher, resolve_lora_targets(teacher, s.lora_targets), s.lora_rank)
    except ValueError:
        return -1, -1
    sig = torch.linspace(1.0, 0.5, s.num_steps)
    with torch.device("meta"):
        st = Student(teacher, sig, "lora", s.transition, s.lora_rank,  # type: ignore[arg-type]
                     s.lora_alpha, s.lora_targets)
    return _count(st)


# --------------------------------------------------------------------------------------------
# Activations
# --------------------------------------------------------------------------------------------
def activation_shape(den: nn.Module, shape: tuple[int, ...], cfg: DistillConfig
                     ) -> dict[str, Any]:
    """``{"tokens", "hidden", "blocks", "basis"}`` used by the activation estimate.

    Z-Image: image tokens ``(H/p)(W/p)`` + ``teacher.max_sequence_length`` caption tokens,
    ``dim``, ``n_layers + 2 n_refiner_layers`` blocks. ResMLP: 1 token, ``hidden``, ``depth``.
    Other networks: spatial positions of the sample, the widest layer, and a quarter of the
    Linear / Conv layers as "blocks" (coarse).
    """
    tr = getattr(den, "transformer", None)
    if tr is not None:
        c = tr.config
        p = int(c.all_patch_size[0])
        img = (shape[-2] // p) * (shape[-1] // p)
        return {"tokens": img + cfg.teacher.max_sequence_length, "hidden": int(c.dim),
                "blocks": int(c.n_layers) + 2 * int(c.n_refiner_layers),
                "basis": f"{img} image + {cfg.teacher.max_sequence_length} caption tokens"}
    net = getattr(den, "net", den)
    if hasattr(net, "blocks") and hasattr(net, "inp"):
        return {"tokens": 1, "hidden": int(net.inp.out_features), "blocks": len(net.blocks),
                "basis": "ResMLP: 1 token"}
    widths, layers = [], 0
    for m in net.modules():
        if isinstance(m, nn.Linear):
            widths.append(m.out_features)
            layers += 1
        elif isinstance(m, nn.Conv2d):
            widths.append(m.out_channels)
            layers += 1
    return {"tokens": math.prod(shape[1:]) if len(shape) > 1 else 1,
            "hidden": max(widths, default=1), "blocks": max(1, layers // 4),
            "basis": "coarse: spatial positions x widest layer"}


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


def build_plan(cfg: DistillConfig, gpus: int, gpu_memory_gb: float | None = None) -> Plan:
    """Counts and the memory table for ``gpus`` data-parallel processes."""
    if gpus < 1:
        raise ConfigError("--gpus: must be >= 1")
    if cfg.train.batch_size % gpus:
        raise ConfigError(f"train.batch_size: {cfg.train.batch_size} (the global batch) is not "
                          f"divisible by --gpus {gpus}")
    models, shape, info = meta_models(cfg)
    teacher, student, method = models["teacher"], models["student"], models["method"]
    t_total, _ = _count(teacher)
    s_total, s_train = _count(student)
    a_total, a_train = _count(method)
    fake = [m for m in method.modules() if type(m).__name__ == "FakeScore"]
    f_total = sum(_count(m)[0] for m in fake)
    counts = [ModelCount("teacher", t_total, 0, f"frozen, {cfg.teacher.dtype}"),
              ModelCount("student", s_total, s_train,
                         f"{cfg.student.parameterization}, K={cfg.student.num_steps}"),
              ModelCount("ema", s_total, 0, "copy of the student")]
    if f_total:
        counts.append(ModelCount("fake_score", f_total, f_total, "trainable teacher copy"))
    if a_total - f_total:
        counts.append(ModelCount("heads", a_total - f_total, a_train - f_total,
                                 "discriminator heads"))
    lora_total, lora_train = (s_total, s_train) if cfg.student.parameterization == "lora" \
        else lora_student_count(cfg, teacher)
    tb = _DTYPE_BYTES[cfg.teacher.dtype]
    act = activation_shape(teacher, shape, cfg)
    per_gpu = cfg.train.batch_size // gpus
    act_b = 4 if cfg.train.mixed_precision == "no" else 2
    fwd = graph_forwards(cfg)
    block = _largest_block(teacher)
    heads = a_total - f_total
    rows = []
    for fsdp in (False, True):
        for lora in (False, True):
            if lora and lora_total < 0:
                continue
            for gc in (False, True):
                if lora:
                    st_total, st_train = lora_total, lora_train
                    base = st_total - st_train  # frozen base in the teacher's dtype
                    st_bytes = base * tb + st_train * 4
                elif cfg.student.parameterization == "lora":  # the decoupled alternative
                    st_total = st_train = t_total * cfg.student.num_steps
                    st_bytes = st_total * 4
                else:
                    st_total, st_train = s_total, s_train
                    st_bytes = st_total * 4
                shard = gpus if fsdp else 1
                # FSDP shards the student, its EMA and the fake score network
                weights = t_total * tb + heads * 4 + (st_bytes + f_total * 4) / shard
                ema = st_bytes / shard
                train_params = st_train + f_total
                grads = (train_params / shard + heads) * 4
                adam = (train_params / shard + heads) * 8
                if fsdp:
                    weights += 2 * block * 4  # gathered blocks (prefetch)
                a = activation_bytes(act, per_gpu, fwd, gc, act_b)
                total = weights + grads + adam + ema + a
                rows.append(MemoryRow(
                    fsdp, lora, gc, weights, grads, adam, ema, a, total,
                    configured=(fsdp == (cfg.train.distributed == "fsdp" and gpus > 1)
                                and lora == (cfg.student.parameterization == "lora")
                                and gc == cfg.train.gradient_checkpointing),
                    supported=not (fsdp and lora),
                    fits=None if gpu_memory_gb is None else total <= gpu_memory_gb * GB))
    return Plan(cfg.method, gpus, per_gpu, json.dumps(info), counts, rows,
                {**act, "graph_forwards": fwd, "bytes_per_value": act_b}, gpu_memory_gb)


def _fmt_n(n: int) -> str:
    for unit, div in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= div:
            return f"{n / div:.2f}{unit}"
    return str(n)


def _gb(b: float) -> str:
    return f"{b / GB:.2f}" if b < 10 * GB else f"{b / GB:.1f}"


def format_plan(plan: Plan) -> str:
    """The human-readable tables."""
    lines = [f"method {plan.method}, {plan.gpus} GPU(s), per-GPU batch {plan.per_gpu_batch}",
             "", f"{'model':<12}{'total':>12}{'trainable':>12}  note"]
    for m in plan.models:
        lines.append(f"{m.name:<12}{_fmt_n(m.total):>12}{_fmt_n(m.trainable):>12}  {m.note}")
    ab = plan.activation_basis
    lines += ["", f"estimated memory per GPU (GiB); activations are a rough estimate "
              f"({ab['basis']}, hidden {ab['hidden']}, {ab['blocks']} blocks, "
              f"{ab['graph_forwards']} graph forward(s) per loss)",
              f"{'fsdp':<6}{'lora':<6}{'ckpt':<6}{'weights':>9}{'grads':>9}{'adam':>9}"
              f"{'ema':>9}{'activ.':>9}{'total':>9}  "]
    for r in plan.rows:
        flag = " *" if r.configured else ""
        note = "" if r.supported else "  (unsupported: fsdp + lora; use ddp)"
        if r.fits is not None and r.supported:
            note += "  fits" if r.fits else "  too big"
        yn = {True: "yes", False: "no"}
        lines.append(f"{yn[r.fsdp]:<6}{yn[r.lora]:<6}{yn[r.grad_ckpt]:<6}{_gb(r.weights):>9}"
                     f"{_gb(r.grads):>9}{_gb(r.adam):>9}{_gb(r.ema):>9}"
                     f"{_gb(r.activations):>9}{_gb(r.total):>9}{flag}{note}")
    lines.append("* = this config. Not included: CUDA context / allocator slack (1-3 GB), "
                 "VAE and text encoder.")
    return "\n".join(lines)


__all__ = ["MemoryRow", "ModelCount", "Plan", "activation_shape", "build_plan", "format_plan",
           "meta_models"]
