"""``fewstep plan``: parameter counts and a per-GPU memory estimate, before renting machines.

Every model of the recipe (teacher, student for its parameterization, EMA, discriminator heads,
fake score network) is built on the **meta** device from configs only: a ``file`` teacher from
its stored config (metadata, no tensors read), a ``zimage`` / ``unet_eps`` teacher from the
``config.json`` files of its folder (``from_config``; no weights loaded). Offline, a hub id the
project ships configs for (``fewstep/assets/configs``: Z-Image-Turbo's transformer, VAE and
text encoder, the public sizes) needs nothing else; another hub id is read from the local
Hugging Face cache only (never downloaded).

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
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fewstep.assets import ASSETS
from fewstep.distill.config import DistillConfig
from fewstep.distill.methods import DistillContext
from fewstep.distill.methods.registry import method_class
from fewstep.errors import ConfigError
from fewstep.student.factory import student_from_spec
from fewstep.teachers import meta_teacher

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
SHIPPED_CONFIGS = ASSETS / "configs"


def shipped_config_ids() -> list[str]:
    """Hub ids whose public configs ship with fewstep (offline ``plan``)."""
    index = json.loads((SHIPPED_CONFIGS / "index.json").read_text())
    return sorted(k for k in index if not k.startswith("_"))


def offline_pretrained(pretrained: str) -> str:
    """A local folder holding ``pretrained``'s configs, without network access: a local
    folder itself; for a hub id the project ships configs for, the shipped folder
    (``model_index.json`` + ``<component>/config.json``, the public sizes); another hub id from
    the local Hugging Face cache. :class:`ConfigError` naming ``teacher.pretrained`` otherwise.
    """
    if Path(pretrained).expanduser().is_dir():
        return pretrained
    index = json.loads((SHIPPED_CONFIGS / "index.json").read_text())
    if pretrained in index:
        return str(SHIPPED_CONFIGS / index[pretrained])
    from huggingface_hub import snapshot_download

    try:
        return str(snapshot_download(pretrained, local_files_only=True,
                                     allow_patterns=["*.json"]))
    except Exception as e:
        raise ConfigError(
            f"teacher.pretrained: no configs for {pretrained!r} offline (not a local folder, "
            f"not in the Hugging Face cache; configs ship for "
            f"{', '.join(shipped_config_ids())}): {str(e).splitlines()[0]}") from None


def model_config(folder: str, subfolder: str) -> dict[str, Any] | None:
    """``<subfolder>/config.json`` of a local pipeline folder (``None`` if absent)."""
    f = Path(folder).expanduser() / subfolder / "config.json"
    return json.loads(f.read_text()) if f.is_file() else None


def _meta_count(build: Callable[[], nn.Module]) -> int:
    with torch.device("meta"):
        return sum(p.numel() for p in build().parameters())


def pipeline_parts(folder: str) -> dict[str, int]:
    """Parameter counts of a pipeline's VAE and (Qwen3) text encoder (0 when unknown), from
    the configs in a local ``folder``."""
    from diffusers import AutoencoderKL

    out = {"vae": 0, "text_encoder": 0, "text_hidden": 0}
    vcfg = model_config(folder, "vae")
    if vcfg is not None:
        out["vae"] = _meta_count(lambda: AutoencoderKL.from_config(vcfg))
    tcfg = model_config(folder, "text_encoder")
    if tcfg is not None and tcfg.get("model_type") == "qwen3":
        from transformers import Qwen3Config, Qwen3Model

        keep = {k: v for k, v in tcfg.items() if not k.startswith("_") and k != "architectures"}
        out["text_encoder"] = _meta_count(lambda: Qwen3Model(Qwen3Config(**keep)))
        out["text_hidden"] = int(tcfg["hidden_size"])
    return out


def offline_meta_teacher(cfg: DistillConfig
                         ) -> tuple[nn.Module, tuple[int, ...], int, dict[str, Any]]:
    """``(teacher on meta, sample shape, num_classes, info)`` from configs only (the teacher
    registry's adapter for ``teacher.kind``; a hub id is read offline, see
    :func:`offline_pretrained`)."""
    t = spec = cfg.teacher
    if t.pretrained is not None:
        local = offline_pretrained(t.pretrained)
        if local != t.pretrained:
            spec = t.model_copy(update={"pretrained": local})
    m = meta_teacher(spec, data=cfg.data)
    info = dict(m.info)
    if t.pretrained is not None:
        info.update(pretrained=t.pretrained, config_folder=spec.pretrained)
    return m.module, tuple(m.data_shape), m.num_classes, info


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
    from fewstep.core.levels import student_sigmas
    from fewstep.data.problem import Problem

    teacher, shape, ncls, info = offline_meta_teacher(cfg)
    teacher.requires_grad_(False)
    _fake_features(teacher, shape)
    info["_teacher_ids"] = [id(p) for p in teacher.parameters()]
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


def owned(student: nn.Module, shared: set[int]) -> tuple[int, int]:
    """``(frozen, trainable)`` parameters the student holds *besides* the teacher's own tensors
    (``shared``: ``id`` of each teacher parameter, taken before the student was built), so a
    base shared with the teacher is not counted again."""
    frozen = train = 0
    for p in student.parameters():
        if id(p) in shared:
            continue
        if p.requires_grad:
            train += p.numel()
        else:
            frozen += p.numel()
    return frozen, train


def lora_student_parts(cfg: DistillConfig, teacher: nn.Module) -> tuple[int, int, int] | None:
    """``(total, own frozen, trainable)`` of the same student with ``parameterization: lora``
    (``None`` if the LoRA settings do not fit the teacher)."""
    from fewstep.student.lora import find_lora_targets
    from fewstep.student.student import Student, resolve_lora_targets

    s = cfg.student
    try:
        find_lora_targets(teacher, resolve_lora_targets(teacher, s.lora_targets), s.lora_rank)
    except ValueError:
        return None
    sig = torch.linspace(1.0, 0.5, s.num_steps)
    shared = {id(p) for p in teacher.parameters()}
    with torch.device("meta"):
        st = Student(teacher, sig, "lora", s.transition, s.lora_rank,  # type: ignore[arg-type]
                     s.lora_alpha, s.lora_targets)
    frozen, train = owned(st, shared)
    return _count(st)[0], frozen, train


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
    needs = method.data_needs()  # type: ignore[operator]
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
        per_prompt = cfg.teacher.max_sequence_length * int(tr.config.cap_feat_dim) * \
            _DTYPE_BYTES[cfg.teacher.dtype]
        n = _prompt_count(cfg)
        host["prompt_cache_per_prompt"] = float(per_prompt)
        if n:
            host["prompt_cache"] = float(per_prompt * n)
        device += per_gpu * per_prompt * (2 if real else 1)
    return float(device), host


def _prompt_count(cfg: DistillConfig) -> int:
    p = cfg.teacher.prompts
    if p is None or not Path(p).expanduser().is_file():
        return 0
    return sum(1 for line in Path(p).expanduser().read_text().splitlines() if line.strip())


def build_plan(cfg: DistillConfig, gpus: int, gpu_memory_gb: float | None = None) -> Plan:
    """Counts and the memory table for ``gpus`` data-parallel processes."""
    if gpus < 1:
        raise ConfigError("--gpus: must be >= 1")
    per_gpu, note = per_gpu_batch(cfg.train.batch_size, gpus)
    models, shape, info = meta_models(cfg)
    teacher, student, method = models["teacher"], models["student"], models["method"]
    t_total, _ = _count(teacher)
    shared = set(info.pop("_teacher_ids"))
    s_total, s_train = _count(student)
    s_frozen, _ = owned(student, shared)
    a_total, a_train = _count(method)
    fake = [m for m in method.modules() if type(m).__name__ == "FakeScore"]
    f_total = sum(_count(m)[0] for m in fake)
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
    if cfg.student.parameterization == "lora":
        lora = (s_total, s_frozen, s_train)
    else:
        lora = lora_student_parts(cfg, teacher)
    tb = _DTYPE_BYTES[cfg.teacher.dtype]
    act = activation_shape(teacher, shape, cfg)
    # plans are for GPUs: auto means bf16 there
    act_b = 4 if cfg.train.mixed_precision == "no" else 2
    fwd = graph_forwards(cfg)
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
                a = activation_bytes(act, per_gpu, fwd, gc, act_b)
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
    lines += ["", f"estimated memory per GPU (GiB); activations are a rough estimate "
              f"({ab['basis']}, hidden {ab['hidden']}, {ab['blocks']} blocks, "
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


__all__ = ["MemoryRow", "ModelCount", "Plan", "activation_shape", "build_plan", "format_plan",
           "meta_models"]
