"""The distillation training loop (one loop for every recipe).

``Trainer(cfg, run_dir).train()``:

1. load the frozen teacher, build the K-step student (initialised from the teacher) and its
   EMA, and the recipe (:mod:`fewstep.distill.methods`);
2. load or build the teacher-sample cache if the recipe needs teacher samples;
3. per generator update: ``train.aux_ratio`` auxiliary updates (discriminator / fake score),
   then one student update, an EMA update, logging, periodic samples and checkpoints;
4. write ``student.safetensors`` (the EMA student) and ``losses.jsonl`` in ``run_dir``.

Run directory: ``config.yaml`` (resolved), ``checkpoints/ckpt_*.safetensors`` (full training
state), ``tb/`` (tensorboard), ``samples/*.png``, ``losses.jsonl``, ``student.safetensors``.

Reliability: ``Trainer(..., resume=True)`` continues from the newest checkpoint that passes its
checksum (corrupt ones are skipped with a one-line reason) and is bit-identical on CPU to an
uninterrupted run; ``losses.jsonl`` is cut back to the checkpoint's step. NaN / Inf in a loss or
gradient raises :class:`DivergenceError` naming the step and the loss term (or, with
``train.on_divergence: rollback``, reloads the last good checkpoint and continues with a lower
LR); a non-finite state is never checkpointed. :meth:`Trainer.request_stop` (used for SIGTERM)
makes the loop checkpoint and raise :class:`TrainingInterrupted` at the next step boundary.

Multi-process (``torchrun --nproc_per_node N`` / ``accelerate launch --multi_gpu``; see
``docs/multi_gpu.md`` and :mod:`fewstep.distill.distributed`): synchronous data parallelism.
``train.batch_size`` is the *global* batch; every rank draws the whole global batch with the
shared data generator (identical on all ranks) and keeps its contiguous ``1/N`` slice, so the
union of the ranks' rows is the one-process batch. Randomness inside the losses (re-noising,
fresh transition noise) comes from a per-rank generator; recipe decisions that select modules
(DMD2 / SiD / Imagine Flash's random step ``k``) from a generator shared by all ranks. The
student is *not* wrapped in ``DistributedDataParallel``: recipes call it several times per loss
through ``Student.generate`` (not ``forward``), which DDP's reducer does not support reliably.
Instead rank 0's initial weights are broadcast and, after every ``backward``, the gradients of
the trainable parameters (student and aux modules alike) are averaged over ranks with bucketed
all-reduces -- the update DDP computes, for any call pattern. Identical gradients and optimizers
keep weights, moments and the EMA bit-identical on all ranks. With ``train.distributed: fsdp``
the student's step networks, its EMA and the fake score network are sharded with FSDP2
(``fully_shard``), which reduces their gradients itself. Loss logs are averaged over ranks (a
NaN anywhere stops every rank). Only rank 0 writes ``config.yaml``, checkpoints (full tensors,
every rank's loss-generator state), logs, samples and ``student.safetensors``; every rank loads
the checkpoint on resume.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import random
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.profiler import record_function
from tqdm.auto import tqdm

from fewstep.assets import teacher_path
from fewstep.config import dump_yaml
from fewstep.data.problem import get_problem
from fewstep.denoiser import Denoiser
from fewstep.distill.config import DistillConfig
from fewstep.distill.distributed import (
    FullOptimizerView,
    FullStateView,
    Snapshot,
    fsdp_shard,
    full_tensor,
    init_distributed,
)
from fewstep.distill.methods import Batch, DistillContext, DistillMethod, method_class
from fewstep.distill.state import (
    checkpoint_config,
    latest_good_checkpoint,
    list_checkpoints,
    load_train_state,
    prune_checkpoints,
    save_train_state,
)
from fewstep.distill.student import Student
from fewstep.distill.teacher_cache import TeacherCache
from fewstep.distill.teachers import rebuild_denoiser
from fewstep.errors import CheckpointError, ConfigError, DivergenceError
from fewstep.io import load_state_into, load_tensors, read_metadata, save_tensors
from fewstep.schedules import student_sigmas
from fewstep.teacher import load_denoiser

log = logging.getLogger(__name__)


def resolve_teacher(cfg: DistillConfig, device: torch.device
                    ) -> tuple[Denoiser, dict[str, Any], str]:
    """Load the frozen teacher: ``(denoiser, its config, identity string)``.

    Missing files, files of another kind and teachers for another data set / sample shape are
    :class:`ConfigError` / :class:`CheckpointError` naming ``teacher.path``.
    """
    path = Path(cfg.teacher.path).expanduser() if cfg.teacher.path else teacher_path(cfg.data)
    if not path.is_file():
        hint = "" if cfg.teacher.path else (f" (no shipped teacher for data {cfg.data!r}; train "
                                            "one with `fewstep teacher train`)")
        raise ConfigError(f"teacher.path: teacher file not found: {path}{hint}")
    try:
        den, dcfg = load_denoiser(path, device)
    except CheckpointError as e:
        raise CheckpointError(f"teacher.path: {e}") from None
    if dcfg.get("data") not in (None, cfg.data):
        raise ConfigError(f"teacher.path: {path} was trained on {dcfg.get('data')!r} but data is "
                          f"{cfg.data!r}")
    shape = dcfg.get("network", {}).get("data_shape")
    want = tuple(get_problem(cfg.data).data_shape)
    if shape is not None and tuple(shape) != want:
        raise ConfigError(f"teacher.path: {path} takes samples of shape {tuple(shape)} but data "
                          f"{cfg.data!r} has shape {want}")
    den.requires_grad_(False).eval()
    return den, dcfg, read_metadata(path).get("sha256", str(path))


def build_student(teacher: Denoiser, cfg: DistillConfig, teacher_shift: float) -> Student:
    s = cfg.student
    if s.parameterization == "lora":
        check_lora(teacher, s.lora_rank, s.lora_targets)
    sig = student_sigmas(s.num_steps, cfg.teacher.steps, teacher_shift, s.sigmas)
    student = Student(teacher, sig, s.parameterization, s.transition, s.lora_rank, s.lora_alpha,
                      s.lora_targets)
    float32_trainables(student)
    return student


def float32_trainables(student: Student) -> None:
    """Keep what trains in float32 (master weights) whatever ``teacher.dtype`` is: the step
    copies (``decoupled`` / ``shared``) or the LoRA weights; a LoRA base keeps the teacher's
    dtype. A no-op for float32 teachers."""
    for m in student.steps:
        m.float()
    for p in student.parameters():
        if p.requires_grad and p.is_floating_point() and p.dtype != torch.float32:
            p.data = p.data.float()


def enable_gradient_checkpointing(student: Student, method: nn.Module, teacher: nn.Module
                                  ) -> None:
    """``train.gradient_checkpointing``: block-level checkpointing in the student's step
    networks (with per-step LoRA: its ``checkpoint_fn``, so recomputation uses the adapter that
    was active in forward), every trainable teacher copy of the recipe (fake score nets) and the
    frozen teacher (its features carry gradients to the student's samples). Denoisers expose it
    as ``set_gradient_checkpointing(enabled, checkpoint_fn)``; :class:`ConfigError` if the
    student's cannot."""
    if student.lora is not None:
        mods, fn = [student.lora.base], student.lora.checkpoint_fn
    else:
        mods, fn = list(student.steps), None
    for m in mods:
        if not hasattr(m, "set_gradient_checkpointing"):
            raise ConfigError(f"train.gradient_checkpointing: {type(m).__name__} does not "
                              "support gradient checkpointing (use a zimage / unet_eps teacher)")
        m.set_gradient_checkpointing(True, checkpoint_fn=fn)
    others = [m for m in method.modules() if isinstance(m, Denoiser)] + [teacher]
    for m in others:
        if hasattr(m, "set_gradient_checkpointing"):
            m.set_gradient_checkpointing(True)


def check_lora(teacher: nn.Module, rank: int, targets: list[str] | None) -> None:
    """:class:`ConfigError` naming ``student.lora_*`` if the LoRA settings do not fit."""
    from fewstep.distill.student import resolve_lora_targets
    from fewstep.lora import find_lora_targets

    try:
        find_lora_targets(teacher, resolve_lora_targets(teacher, targets), rank)
    except ValueError as e:
        field = "student.lora_rank" if "rank" in str(e) else "student.lora_targets"
        raise ConfigError(f"{field}: {e}") from None


def _lr_warmup(steps: int) -> Callable[[int], float]:
    """LR multiplier for a linear warm-up over ``steps`` generator updates (then constant)."""
    return lambda i: 1.0 if steps <= 0 else min(1.0, (i + 1) / steps)


#: config keys that may differ between a checkpoint and a resumed run
RESUME_MUTABLE = ("train.iterations", "train.log_every", "train.sample_every",
                  "train.ckpt_every", "train.keep_last", "train.on_divergence",
                  "train.rollback_lr_factor", "train.max_rollbacks", "train.device",
                  "train.compile", "train.distributed",
                  "teacher.path", "teacher.pretrained", "cache.dir", "eval.")


class TrainingInterrupted(Exception):
    """Training stopped on request (e.g. SIGTERM) after writing a checkpoint."""

    def __init__(self, step: int, checkpoint: Path) -> None:
        super().__init__(f"training stopped at step {step}; checkpoint {checkpoint} (continue "
                         "with --resume)")
        self.step, self.checkpoint = step, checkpoint


def student_file_config(cfg: DistillConfig, teacher_cfg: dict[str, Any], sigmas: Tensor
                        ) -> dict[str, Any]:
    return {"denoiser": teacher_cfg, "student": cfg.student.model_dump(),
            "sigmas": [float(s) for s in sigmas], "method": cfg.method, "data": cfg.data}


def save_student(path: str | Path, student: Student, config: dict[str, Any]) -> None:
    """Write a student (all steps) with what rebuilds it."""
    save_tensors(path, student.state_dict(), "student", config)


def load_student(path: str | Path, device: str | torch.device = "cpu",
                 allow_builders: Sequence[str] = ()) -> tuple[Student, dict[str, Any]]:
    """Rebuild a student written by :func:`save_student`; returns ``(student (eval), config)``.
    ``allow_builders``: custom teacher builders the run's config names (``teacher.builder``)."""
    tensors, config = load_tensors(path, kind="student")
    try:
        like = rebuild_denoiser(config["denoiser"], allow_builders)  # the teacher registry
        s = config["student"]
        st = Student(like, torch.tensor(config["sigmas"]), s["parameterization"],
                     s["transition"], s["lora_rank"], s["lora_alpha"], s["lora_targets"])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: student config is invalid ({e})") from None
    load_state_into(st, tensors, str(path))
    return st.to(device).eval(), config


class Trainer:
    """Builds a run from a validated :class:`DistillConfig` and trains it."""

    def __init__(self, cfg: DistillConfig, run_dir: str | Path, progress: bool = True,
                 resume: bool = False) -> None:
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.progress = progress
        self.resume = resume
        self.device = torch.device(cfg.train.device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError(f"train.device: {cfg.train.device!r} is not available on this "
                              "machine (no CUDA); use cpu")
        if self.device.type == "mps" and not torch.backends.mps.is_available():
            raise ConfigError("train.device: 'mps' is not available on this machine; use cpu")
        self.dist, self.device = init_distributed(self.device, cfg.train.distributed)
        if cfg.train.batch_size % self.dist.world_size:
            raise ConfigError(f"train.batch_size: {cfg.train.batch_size} (the global batch) is "
                              f"not divisible by the {self.dist.world_size} processes")
        torch.manual_seed(cfg.train.seed)
        np.random.seed(cfg.train.seed)  # every RNG a checkpoint records starts from the seed
        random.seed(cfg.train.seed)
        self.gen = torch.Generator().manual_seed(cfg.train.seed)
        # randomness inside the losses: the data stream itself with one process (unchanged
        # runs); with N processes one stream per rank, plus one shared by all ranks for choices
        # of which step modules to run (see the module docstring)
        self.loss_gen, self.step_gen = self.gen, None
        if self.dist.enabled:
            rank_seed = cfg.train.seed + 7919 * (1 + self.dist.rank)
            self.loss_gen = torch.Generator().manual_seed(rank_seed)
            self.step_gen = torch.Generator().manual_seed(cfg.train.seed + 104729)
        from fewstep.distill.teachers import load_teacher

        with self.dist.main_first():  # rank 0 fills a missing prompt-embedding cache first
            loaded = load_teacher(cfg, self.device)  # any teacher.kind; brings its problem
        self.problem, self.teacher = loaded.problem, loaded.denoiser
        self.teacher_cfg, self.teacher_id = loaded.config, loaded.identity
        self.pipeline = loaded.pipeline  # the diffusers pipeline (VAE, text encoder) or None
        samp = self.teacher_cfg.get("sampling", {})
        self.teacher_shift = cfg.teacher.shift or samp.get("shift", 1.0)
        self.teacher_w = cfg.teacher.cfg_scale if cfg.teacher.cfg_scale is not None \
            else samp.get("cfg_scale", 1.0)
        self.student = build_student(self.teacher, cfg, self.teacher_shift).to(self.device)
        self.student.train()
        self.ema = copy.deepcopy(self.student).eval().requires_grad_(False)
        example = torch.zeros((2, *self.problem.data_shape), device=self.device)
        example_cond = self.problem.cond_map(self.problem.sample_cond(2, device=self.device))
        self.ctx = DistillContext(cfg, self.problem, self.teacher, self.teacher_w, self.student,
                                  self.device, self.loss_gen, example, example_cond)
        self.method: DistillMethod = method_class(cfg.method)(self.ctx).to(self.device)
        self._distribute()
        if cfg.train.gradient_checkpointing:
            enable_gradient_checkpointing(self.student, self.method, self.teacher)
        t = cfg.train
        fast = adamw_options(self.device)
        self.opt_g = torch.optim.AdamW([p for p in self.student.parameters() if p.requires_grad],
                                       lr=t.lr, betas=t.betas, weight_decay=t.weight_decay, **fast)
        groups = self.method.aux_parameter_groups()
        self.opt_aux = torch.optim.AdamW(groups, lr=t.lr, betas=t.betas, **fast) \
            if groups else None
        if t.compile:
            compile_student(self.student)
        lam = torch.optim.lr_scheduler.LambdaLR
        self.sched_g = lam(self.opt_g, _lr_warmup(t.lr_warmup))
        self.sched_aux = lam(self.opt_aux, _lr_warmup(t.lr_warmup)) if self.opt_aux else None
        self.rollbacks = 0
        self.lr_scale = 1.0  # product of the rollback LR factors applied so far
        self._stop_reason: str | None = None
        self.cache: dict[str, Tensor] | None = None
        self.data: tuple[Tensor, Tensor | None] | None = None
        self.step = 0
        self.history: list[dict[str, float]] = []

    def _distribute(self) -> None:
        """Broadcast rank 0's weights; with FSDP shard the trainable networks and the EMA."""
        d = self.dist
        if not d.enabled:
            return
        d.broadcast_modules(self.student, self.ema, self.method)
        self.student.step_generator = self.step_gen
        if d.fsdp:
            from fewstep.distill.fake_score import FakeScore

            if self.student.lora is not None:
                raise ConfigError("train.distributed: fsdp is not supported with "
                                  "student.parameterization=lora; use ddp (the adapters are "
                                  "small; the frozen base is replicated on each rank)")
            fakes = [m.den for m in self.method.modules() if isinstance(m, FakeScore)]
            for m in [*self.student.steps, *self.ema.steps, *fakes]:
                fsdp_shard(m)

    # ----------------------------------------------------------------- data
    def _needs_cache(self) -> bool:
        m, g = self.method, self.cfg.gan
        return m.needs_teacher_pairs or (m.needs_real and g.real == "teacher"
                                         and g.real_source == "cache")

    def prepare_data(self) -> None:
        """Load / build the teacher cache and the data set as the recipe requires."""
        if self._needs_cache():
            c = self.cfg
            mid = float(self.student.sigmas[1]) if self.student.num_steps > 1 else None
            root = Path(c.cache.dir).expanduser()
            try:
                root.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise ConfigError(f"cache.dir: cannot use {root} as a folder ({e.strerror or e})"
                                  ) from None
            cache = TeacherCache(
                root, self.teacher, self.teacher_id,
                self.problem.data_shape,
                lambda n, g: self.problem.sample_cond(n, g),
                self.problem.cond_map, steps=c.teacher.steps, shift=self.teacher_shift,
                cfg_scale=self.teacher_w, mid_sigma=mid, size=c.cache.size,
                shard_size=min(c.cache.shard_size, c.cache.size), seed=c.train.seed,
                batch_size=c.cache.batch_size, device=self.device)
            self.cache = {k: v.to(self.device) for k, v in cache.load(self.progress).items()}
        if self.method.needs_real and self.cfg.gan.real == "dataset":
            x, y = self.problem.split("train")
            self.data = (x.to(self.device), None if y is None else y.to(self.device))

    def _randint(self, high: int, n: int) -> Tensor:
        return torch.randint(0, high, (n,), generator=self.gen).to(self.device)

    def next_batch(self) -> Batch:
        """Draw one batch with the trainer's generator (so it is part of the resumable state)."""
        b = self.cfg.train.batch_size
        c = self.cache
        if self.method.needs_teacher_pairs:
            assert c is not None
            i = self._randint(c["eps"].shape[0], b)
            cond = self.problem.cond_map(c["cond"][i]) if "cond" in c else None
            batch = Batch(c["eps"][i], cond,
                          teacher_sample=c["sample"][i], teacher_mid=c.get("mid", c["sample"])[i])
        else:
            noise = torch.randn((b, *self.problem.data_shape), generator=self.gen).to(self.device)
            batch = Batch(noise, self.problem.cond_map(
                self.problem.sample_cond(b, self.gen, self.device)))
        if self.method.needs_real:
            if self.cfg.gan.real == "dataset":
                assert self.data is not None
                j = self._randint(self.data[0].shape[0], b)
                batch.real = self.data[0][j]
                batch.real_cond = None if self.data[1] is None else self.data[1][j]
            elif self.cfg.gan.real_source == "cache":
                assert c is not None
                j = self._randint(c["sample"].shape[0], b)
                batch.real = c["sample"][j]
                batch.real_cond = self.problem.cond_map(c["cond"][j]) if "cond" in c else None
            else:
                batch.real, batch.real_cond = self._online_teacher(b)
        return self.dist.shard(batch, b)  # this rank's rows (online teacher rows already are)

    @torch.no_grad()
    def _online_teacher(self, b: int) -> tuple[Tensor, Any]:
        from fewstep.samplers import euler_sample
        from fewstep.schedules import teacher_sigmas

        noise = torch.randn((b, *self.problem.data_shape), generator=self.gen).to(self.device)
        cond = self.problem.cond_map(self.problem.sample_cond(b, self.gen, self.device))
        noise, cond = self.dist.shard(noise, b), self.dist.shard(cond, b)  # only this rank's rows
        sig = teacher_sigmas(self.cfg.teacher.steps, self.teacher_shift)
        return euler_sample(self.teacher, noise, cond, sig, self.teacher_w).sample, cond

    # ----------------------------------------------------------------- state
    def _state_objects(self) -> tuple[dict[str, Any], dict[str, Any]]:
        mods: dict[str, Any] = {"student": self.student, "ema": self.ema, "method": self.method}
        opts: dict[str, Any] = {"g": self.opt_g}
        if self.opt_aux is not None:
            opts["aux"] = self.opt_aux
        if self.dist.fsdp:  # full tensors in and out (gathering / sharding are collectives)
            mods = {k: FullStateView(m) for k, m in mods.items()}
            opts = {k: FullOptimizerView(o) for k, o in opts.items()}
        return mods, opts

    def _generators(self, ck: Path | None = None) -> dict[str, torch.Generator]:
        """Generators a checkpoint records: to save (``ck=None``; with N processes every rank's
        loss stream, gathered: a collective) or to restore from ``ck``."""
        gens = {"data": self.gen}
        d = self.dist
        if not d.enabled:
            return gens
        assert self.step_gen is not None
        gens["step"] = self.step_gen
        if ck is None:
            for r, st in enumerate(d.gather_generator_states(self.loss_gen)):
                gens[f"loss{r}"] = torch.Generator()
                gens[f"loss{r}"].set_state(st)
            return gens
        saved = int(json.loads(read_metadata(ck).get("counters", "{}")).get("world_size", 1))
        if saved == d.world_size:
            gens[f"loss{d.rank}"] = self.loss_gen
        else:
            log.warning("resume: %s was written by %d process(es), this run has %d; the "
                        "per-rank loss noise streams restart (the data order continues)",
                        ck, saved, d.world_size)
            if saved == 1:
                gens.pop("step")
        return gens

    def _schedulers(self) -> dict[str, torch.optim.lr_scheduler.LRScheduler]:
        out: dict[str, torch.optim.lr_scheduler.LRScheduler] = {"g": self.sched_g}
        if self.sched_aux is not None:
            out["aux"] = self.sched_aux
        return out

    @property
    def checkpoint_dir(self) -> Path:
        return self.run_dir / "checkpoints"

    def save_checkpoint(self) -> Path:
        """Write the full training state (refuses, with :class:`DivergenceError`, if non-finite)."""
        mods, opts = self._state_objects()
        path = self.checkpoint_dir / f"ckpt_{self.step:08d}.safetensors"
        counters = {"step": self.step, "rollbacks": self.rollbacks, "lr_scale": self.lr_scale,
                    "teacher_id": self.teacher_id, "world_size": self.dist.world_size}
        gens = self._generators()
        if self.dist.fsdp:  # every rank gathers; rank 0 writes
            mods = {k: Snapshot(m.state_dict()) for k, m in mods.items()}
            opts = {k: Snapshot(o.state_dict()) for k, o in opts.items()}
        err: DivergenceError | None = None
        if self.dist.is_main:
            try:
                save_train_state(path, mods, opts, gens, counters,
                                 self.cfg.model_dump(mode="json"), self._schedulers())
                prune_checkpoints(path.parent, self.cfg.train.keep_last)
            except DivergenceError as e:
                if not self.dist.enabled:
                    raise
                err = e
        ok, _ = self.dist.all_flags(err is None, self.device)  # also: the file exists for all
        if not ok:
            raise err or DivergenceError(f"refusing to write checkpoint {path.name}: the "
                                         "training state holds NaN or Inf")
        return path

    def _load_checkpoint(self, ck: Path) -> dict[str, Any]:
        mods, opts = self._state_objects()
        counters = load_train_state(ck, mods, opts, self._generators(ck), self._schedulers())
        self.step = int(counters["step"])
        return counters

    def try_resume(self) -> bool:
        """Load the newest good checkpoint; ``False`` if the run has none yet.

        Raises :class:`CheckpointError` if checkpoints exist but none is usable, and
        :class:`ConfigError` if the config differs from the checkpoint's in a key outside
        :data:`RESUME_MUTABLE`.
        """
        problems: list[str] = []
        ck = latest_good_checkpoint(self.checkpoint_dir, problems)
        if ck is None:
            if problems:
                raise CheckpointError(f"resume: no usable checkpoint in {self.checkpoint_dir} "
                                      f"({'; '.join(problems)}); delete them to start over")
            return False
        self._check_resume_config(ck)
        counters = self._load_checkpoint(ck)
        if counters.get("teacher_id", self.teacher_id) != self.teacher_id:
            raise CheckpointError(f"resume: {ck} was trained with another teacher (its weights "
                                  "differ from teacher.path)")
        self.rollbacks = int(counters.get("rollbacks", 0))
        self.lr_scale = float(counters.get("lr_scale", 1.0))
        self.history = self._read_history()
        log.info("resumed from %s at step %d", ck, self.step)
        return True

    def _check_resume_config(self, ck: Path) -> None:
        old = _flatten(checkpoint_config(ck))
        new = _flatten(self.cfg.model_dump(mode="json"))
        diff = [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)
                and not k.startswith(RESUME_MUTABLE)]
        if diff:
            k = diff[0]
            more = f" (and {len(diff) - 1} more: {', '.join(diff[1:4])})" if len(diff) > 1 else ""
            raise ConfigError(f"{k}: is {new.get(k)!r} but the run in {self.run_dir} was "
                              f"trained with {old.get(k)!r}{more}; a resumed run keeps its "
                              "config (use a new --out to change it)")

    def _read_history(self) -> list[dict[str, float]]:
        """``losses.jsonl`` up to the current step (rank 0 owns and truncates the file)."""
        if not self.dist.is_main:
            return []
        return _read_history(self.run_dir / "losses.jsonl", self.step)

    def request_stop(self, reason: str = "stop requested") -> None:
        """Ask the loop to checkpoint and raise :class:`TrainingInterrupted` (signal-safe)."""
        self._stop_reason = reason

    # ----------------------------------------------------------------- loop
    def _autocast(self) -> contextlib.AbstractContextManager:
        mp = self.cfg.train.mixed_precision
        if mp == "no":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if mp == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    def _check_finite(self, logs: dict[str, Tensor], params: Iterator[nn.Parameter],
                      phase: str, total_norm: Tensor | None = None) -> None:
        # ``self.step + 1``: the update being computed, as numbered in losses.jsonl / checkpoints
        for k, v in logs.items():
            if not torch.isfinite(v).all():
                raise DivergenceError(f"{phase} loss term {k!r} is {v.float().mean().item()} at "
                                      f"step {self.step + 1}")
        if total_norm is not None and bool(torch.isfinite(total_norm)):
            return  # a finite total gradient norm means every gradient is finite
        for p in params:
            if p.grad is not None and not torch.isfinite(p.grad).all():
                names = {id(q): n for n, q in self._named_trainable()}
                terms = ", ".join(logs) or "total"
                raise DivergenceError(
                    f"{phase} gradient of {names.get(id(p), 'a parameter')!r} is not finite at "
                    f"step {self.step + 1} (loss terms {terms} were finite)")

    def _named_trainable(self) -> Iterator[tuple[str, nn.Parameter]]:
        yield from (("student." + n, p) for n, p in self.student.named_parameters())
        yield from (("method." + n, p) for n, p in self.method.named_parameters())

    def _set_aux_grad(self, flag: bool) -> None:
        # the optimizer's own groups: a recipe's aux_parameter_groups() may filter on
        # requires_grad, which would return nothing once the flags were switched off
        assert self.opt_aux is not None
        for g in self.opt_aux.param_groups:
            for p in g["params"]:
                p.requires_grad_(flag)

    def train_iteration(self) -> dict[str, float]:
        """One generator update preceded by ``aux_ratio`` auxiliary updates."""
        t = self.cfg.train
        logs: dict[str, Tensor] = {}
        if self.opt_aux is not None:
            self._set_aux_grad(True)
            for _ in range(t.aux_ratio):
                with record_function("aux"):
                    batch = self.next_batch()
                    with self._autocast():
                        out = self.method.aux_loss(batch, self.step)
                    if out is None:
                        break
                    loss, al = out
                    self.opt_aux.zero_grad(set_to_none=True)
                    loss.backward()
                    params = [p for g in self.opt_aux.param_groups for p in g["params"]]
                    self.dist.average_gradients(params)
                    al = self.dist.mean_logs(al, self.device)
                    norm = _grad_norm(params)
                    self._check_finite(al, iter(params), "auxiliary", norm)
                    torch.nn.utils.clip_grads_with_norm_(params, t.grad_clip * 10, norm)
                    self.opt_aux.step()
                logs.update({k: v.detach() for k, v in al.items()})
            self._set_aux_grad(False)
        with record_function("generator_forward"):
            batch = self.next_batch()
            with self._autocast():
                loss, gl = self.method.generator_loss(batch, self.step)
        with record_function("generator_backward"):
            self.opt_g.zero_grad(set_to_none=True)
            loss.backward()
        with record_function("optimizer"):
            params = [p for g in self.opt_g.param_groups for p in g["params"]]
            self.dist.average_gradients(params)
            gl = self.dist.mean_logs(gl, self.device)
            gnorm = _grad_norm(params)
            self._check_finite(gl, iter(params), "generator", gnorm)
            torch.nn.utils.clip_grads_with_norm_(params, t.grad_clip, gnorm)
            self.opt_g.step()
            self.sched_g.step()
            if self.sched_aux is not None:
                self.sched_aux.step()
            self._update_ema()
        self.step += 1
        logs.update({k: v.detach() for k, v in gl.items()})
        logs["grad_norm"] = gnorm.detach()
        return {k: float(v) for k, v in logs.items()}

    @torch.no_grad()
    def _update_ema(self) -> None:
        d = self.cfg.train.ema_decay
        pairs = [(pe, p.detach()) for pe, p in zip(self.ema.parameters(),
                                                    self.student.parameters(), strict=True)
                 if p.requires_grad]
        if pairs:  # one multi-tensor op; element-wise identical to ``pe.lerp_(p, 1 - d)``
            torch._foreach_lerp_([a for a, _ in pairs], [b for _, b in pairs], 1.0 - d)

    def train(self) -> Student:
        """Run (or resume) training; returns the EMA student."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        main = self.dist.is_main
        with self.dist.main_first():  # rank 0 builds a missing teacher cache, the others load it
            self.prepare_data()
        # resume after prepare_data so that nothing it might draw from the global RNG shifts
        # the restored RNG states (bit-identical continuation)
        resumed = self.try_resume() if self.resume else False
        if main:
            (self.run_dir / "config.yaml").write_text(dump_yaml(self.cfg))
        first = self.cfg.train.on_divergence == "rollback" and not list_checkpoints(
            self.checkpoint_dir)
        if self.dist.all_flags(first, self.device)[1]:
            self.save_checkpoint()  # something to roll back to
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(self.run_dir / "tb"), purge_step=self.step if resumed
                               else None) if main else _NullWriter()
        t = self.cfg.train
        t0 = time.perf_counter()
        bar = tqdm(total=t.iterations, initial=self.step, desc=f"distill[{self.cfg.method}]",
                   disable=not (self.progress and main))
        with (self.run_dir / "losses.jsonl" if main else Path(os.devnull)).open("a") as hist:
            while self.step < t.iterations:
                try:
                    logs = self.train_iteration()
                except DivergenceError as e:
                    hist.flush()
                    self._on_divergence(e)
                    bar.n = self.step
                    continue
                rec = {"step": self.step, **{k: round(v, 6) for k, v in logs.items()}}
                self.history.append(rec)
                hist.write(json.dumps(rec) + "\n")
                if self.step % t.log_every == 0 or self.step == t.iterations:
                    hist.flush()
                    for k, v in logs.items():
                        writer.add_scalar(f"loss/{k}", v, self.step)
                    bar.set_postfix({k: f"{v:.3g}" for k, v in logs.items()
                                     if k.startswith(("g_total", "d_loss", "fake_loss"))})
                if t.sample_every and self.step % t.sample_every == 0:
                    self.write_samples(f"step{self.step:06d}")
                if t.ckpt_every and self.step % t.ckpt_every == 0:
                    hist.flush()
                    try:
                        self.save_checkpoint()
                    except DivergenceError as e:  # finite losses but a non-finite state
                        self._on_divergence(DivergenceError(f"{e} after step {self.step}"))
                        bar.n = self.step
                        continue
                bar.update(1)
                if self._stop_requested():
                    hist.flush()
                    bar.close()
                    writer.close()
                    ck = self.save_checkpoint()
                    log.warning("%s: checkpoint %s", self._stop_reason, ck)
                    raise TrainingInterrupted(self.step, ck)
        bar.close()
        writer.close()
        self.save_checkpoint()
        self.seconds = time.perf_counter() - t0
        self.ema.eval()
        ema = Snapshot(FullStateView(self.ema).state_dict()) if self.dist.fsdp else self.ema
        if main:
            save_student(self.run_dir / "student.safetensors", ema,  # type: ignore[arg-type]
                         student_file_config(self.cfg, self.teacher_cfg, self.ema.sigmas))
        self.write_samples("final")
        self.dist.barrier()  # every rank returns once the files exist
        return self.ema

    def _stop_requested(self) -> bool:
        """A stop was requested (on any rank: all ranks stop at the same step)."""
        return self.dist.all_flags(self._stop_reason is not None, self.device)[1]

    def _on_divergence(self, err: DivergenceError) -> None:
        """Stop with a message naming the last good checkpoint, or roll back to it."""
        t = self.cfg.train
        problems: list[str] = []
        ck = latest_good_checkpoint(self.checkpoint_dir, problems)
        where = f"last good checkpoint: {ck}" if ck else "no checkpoint was written"
        if t.on_divergence != "rollback" or ck is None:
            raise DivergenceError(f"{err}; {where} (lower train.lr, or set "
                                  "train.on_divergence=rollback)") from None
        if self.rollbacks >= t.max_rollbacks:
            raise DivergenceError(f"{err}; gave up after {self.rollbacks} rollbacks "
                                  f"(train.max_rollbacks); {where}") from None
        self.rollbacks += 1
        rollbacks, scale = self.rollbacks, self.lr_scale * t.rollback_lr_factor
        counters = self._load_checkpoint(ck)
        factor = scale / float(counters.get("lr_scale", 1.0))
        for opt, sched in ((self.opt_g, self.sched_g), (self.opt_aux, self.sched_aux)):
            if opt is None or sched is None:
                continue
            sched.base_lrs = [b * factor for b in sched.base_lrs]
            for g, base in zip(opt.param_groups, sched.base_lrs, strict=True):
                g["lr"] *= factor
                g["initial_lr"] = base
            sched._last_lr = [g["lr"] for g in opt.param_groups]
        self.rollbacks, self.lr_scale = rollbacks, scale
        self.history = self._read_history()
        log.warning("%s; rolled back to %s (step %d), learning rates x%g (rollback %d of %d)",
                    err, ck, self.step, scale, rollbacks, t.max_rollbacks)

    @torch.no_grad()
    def write_samples(self, tag: str, n: int = 100) -> None:
        from fewstep.viz import save_grid

        if not (self.dist.is_main or self.dist.fsdp):  # FSDP: every rank runs the sharded EMA
            return
        g = torch.Generator().manual_seed(self.cfg.eval.seed)
        n = 1000 if self.problem.is_toy else n
        decode = getattr(self.problem, "decode", None)  # latents -> RGB images (VAE)
        n_prompts = getattr(self.problem, "num_prompts", 0)
        if decode is not None:
            n = min(n, 16)
        noise = torch.randn((n, *self.problem.data_shape), generator=g).to(self.device)
        cond = None if self.problem.num_classes == 0 else \
            (torch.arange(n) % self.problem.num_classes).to(self.device)
        if n_prompts:
            cond = self.problem.cond_map((torch.arange(n) % n_prompts).to(self.device))
        x = self.ema.generate(noise, cond, generator=g).sample
        if decode is not None:
            x = decode(x)
            n = x.shape[0]
        if self.dist.is_main:
            save_grid(self.run_dir / "samples" / f"{tag}.png", x, nrow=min(10, n),
                      title=f"{self.cfg.method} step {self.step}")


def _grad_norm(params: list[nn.Parameter]) -> Tensor:
    """Total 2-norm of the gradients (what ``clip_grad_norm_`` computes); non-finite iff some
    gradient is (or the norm overflows)."""
    grads = [p.grad for p in params if p.grad is not None]
    # FSDP-sharded gradients give a DTensor norm: its full value is the global norm
    return full_tensor(torch.nn.utils.get_total_norm(grads)) if grads else torch.zeros(())


class _NullWriter:
    """Stands in for tensorboard's SummaryWriter on ranks other than 0."""

    def add_scalar(self, *args: Any, **kwargs: Any) -> None:
        pass

    def close(self) -> None:
        pass


def adamw_options(device: torch.device) -> dict[str, bool]:
    """``{"fused": True}`` where PyTorch has a fused AdamW kernel for ``device`` (CPU and CUDA:
    one kernel per tensor instead of ~10 ops; ~4x faster steps on CPU), else ``{}``."""
    try:
        torch.optim.AdamW([nn.Parameter(torch.zeros(1, device=device))], fused=True)
    except (RuntimeError, ValueError):
        return {}
    return {"fused": True}


def compile_student(student: Student) -> None:
    """``torch.compile`` every step module in place (state-dict keys unchanged)."""
    mods = [student.lora.base] if student.lora is not None else list(student.steps)
    for m in mods:
        m.compile()


def _read_history(path: Path, upto: int) -> list[dict[str, float]]:
    """Rows of ``losses.jsonl`` up to step ``upto``; the file is truncated after them.

    Rows are appended in step order, so the kept rows are a prefix: reading stops at the first
    row past ``upto`` or the first torn line (a process killed mid-write). Truncating in place
    (one syscall) keeps an open append handle valid, which a rollback relies on.
    """
    if not path.exists():
        return []
    rows: list[dict[str, float]] = []
    keep = 0
    with path.open("rb") as f:
        for line in f:
            try:
                r = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError):
                break
            if not (line.endswith(b"\n") and isinstance(r, dict)
                    and isinstance(r.get("step"), int) and r["step"] <= upto):
                break
            rows.append(r)
            keep += len(line)
    os.truncate(path, keep)
    return rows


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out

