"""The distillation training loop (one loop for every method); ``docs/tour.md`` follows one
batch through it.

``Trainer(cfg, run_dir).train()`` wires the pieces, each in its own module -- the teacher
(:func:`fewstep.teachers.load_teacher`), the student and its EMA
(:mod:`~fewstep.student.factory`), the method (:mod:`fewstep.distill.methods`: losses,
:class:`~fewstep.distill.methods.base.DataNeeds` and ``AuxUpdates``),
batches (:mod:`~fewstep.distill.engine.batches`), optimizers (:mod:`~fewstep.distill.engine.optim`),
checkpoints (:mod:`~fewstep.distill.engine.checkpoints`), logs and samples
(:mod:`~fewstep.distill.engine.run_logs`) -- and runs, per generator update, the method's auxiliary
updates, one student update, the EMA update, a ``losses.jsonl`` row, samples and checkpoints.

Run directory: ``config.yaml``, ``checkpoints/``, ``tb/``, ``samples/``, ``losses.jsonl``,
``student.safetensors`` (the EMA student). Resume (``resume=True``) is bit-identical on CPU;
NaN / Inf raises :class:`DivergenceError` naming step and term, or rolls back
(``train.on_divergence``); :meth:`Trainer.request_stop` (SIGTERM) checkpoints and raises
:class:`TrainingInterrupted` at the next step boundary. Multi-process (torchrun): the global
batch is split over ranks, torch's DDP (wrapping each loss) averages gradients during backward
(or FSDP2 shards the networks), only rank 0 writes (see ``docs/multi_gpu.md`` and
:mod:`fewstep.distill.engine.distributed`). Host syncs: loss terms and gradient norms stay on the
device and are read -- and checked for NaN / Inf -- every ``train.log_every`` steps and before
each checkpoint (:mod:`fewstep.distill.engine.precision`, which also holds autocast and fp16's
gradient scaler).
"""

from __future__ import annotations

import contextlib
import logging
import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.profiler import record_function
from tqdm.auto import tqdm

from fewstep.core.denoiser import Denoiser
from fewstep.distill.config import DistillConfig
from fewstep.distill.engine.batches import BatchSource
from fewstep.distill.engine.checkpoints import (
    CheckpointManager,
    TrainState,
    checkpoint_generators,
    state_views,
)
from fewstep.distill.engine.distributed import DDPLoss, FullStateView, Snapshot, init_distributed
from fewstep.distill.engine.divergence import nonfinite_gradient
from fewstep.distill.engine.optim import Optimizers, grad_norm, params_of
from fewstep.distill.engine.precision import DeferredLogs, Precision
from fewstep.distill.engine.replicas import distribute
from fewstep.distill.engine.run_logs import LossLog, ScalarWriter, write_samples
from fewstep.distill.methods import DistillContext, DistillMethod, method_class
from fewstep.errors import ConfigError, DivergenceError
from fewstep.student.ema import ema_update
from fewstep.student.factory import (
    build_student,
    compile_student,
    enable_gradient_checkpointing,
)
from fewstep.student.student import Student, TrainableStateView
from fewstep.student.student_file import save_student_file, student_file_config
from fewstep.teachers import load_teacher
from fewstep.utils.config_files import dump_yaml
from fewstep.utils.files import atomic_write_text

log = logging.getLogger(__name__)

__all__ = ["Trainer", "TrainingInterrupted"]


class TrainingInterrupted(Exception):
    """Training stopped on request (e.g. SIGTERM) after writing a checkpoint."""

    def __init__(self, step: int, checkpoint: Path) -> None:
        super().__init__(f"training stopped at step {step}; checkpoint {checkpoint} (continue "
                         "with --resume)")
        self.step, self.checkpoint = step, checkpoint


class Trainer:
    """Builds a run from a validated :class:`DistillConfig` and trains it."""

    def __init__(self, cfg: DistillConfig, run_dir: str | Path, progress: bool = True,
                 resume: bool = False) -> None:
        self.cfg, self.run_dir, self.progress, self.resume = cfg, Path(run_dir), progress, resume
        t = cfg.train
        self.device = torch.device(t.device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError(f"train.device: {t.device!r} is not available on this "
                              "machine (no CUDA); use cpu")
        if self.device.type == "mps" and not torch.backends.mps.is_available():
            raise ConfigError("train.device: 'mps' is not available on this machine; use cpu")
        self.dist, self.device = init_distributed(self.device, t.distributed)
        if t.batch_size % self.dist.world_size:
            raise ConfigError(f"train.batch_size: {t.batch_size} (the global batch) is "
                              f"not divisible by the {self.dist.world_size} processes")
        torch.manual_seed(t.seed)
        np.random.seed(t.seed)  # every RNG a checkpoint records starts from the seed
        random.seed(t.seed)
        self.gen = torch.Generator().manual_seed(t.seed)
        # randomness inside the losses: the data stream itself with one process; with N
        # processes one stream per rank, plus one shared by all ranks for step choices
        self.loss_gen, self.step_gen = self.gen, None
        if self.dist.enabled:
            self.loss_gen = torch.Generator().manual_seed(t.seed + 7919 * (1 + self.dist.rank))
            self.step_gen = torch.Generator().manual_seed(t.seed + 104729)
        with self.dist.main_first():  # rank 0 fills a missing prompt-embedding cache first
            loaded = load_teacher(cfg, self.device)
        self.problem, self.teacher = loaded.problem, loaded.denoiser
        self.teacher_cfg, self.teacher_id = loaded.config, loaded.identity
        self.pipeline = loaded.pipeline  # the diffusers pipeline (VAE, text encoder) or None
        samp = self.teacher_cfg.get("sampling", {})
        self.teacher_shift = cfg.teacher.shift or samp.get("shift", 1.0)
        self.teacher_w = cfg.teacher.cfg_scale if cfg.teacher.cfg_scale is not None \
            else samp.get("cfg_scale", 1.0)
        self.student = build_student(self.teacher, cfg, self.teacher_shift,
                                     loaded.sigmas).to(self.device)
        self.student.train()
        self.ema = self.student.ema_copy()  # trainables copied, a LoRA base shared
        example = torch.zeros((2, *self.problem.data_shape), device=self.device)
        example_cond = self.problem.cond_map(self.problem.sample_cond(2, device=self.device))
        self.ctx = DistillContext(cfg, self.problem, self.teacher, self.teacher_w, self.student,
                                  self.device, self.loss_gen, example, example_cond)
        self.method: DistillMethod = method_class(cfg.method)(self.ctx).to(self.device)
        distribute(self.dist, self.student, self.ema, self.method, self.step_gen,
                   {id(p) for p in self.teacher.parameters()})
        if t.gradient_checkpointing:
            enable_gradient_checkpointing(
                self.student, [*(m for m in self.method.modules() if isinstance(m, Denoiser)),
                               self.teacher])
        self.optim = Optimizers.build(self.student, self.method.aux_updates(), t, self.device)
        self.prec = Precision(t.mixed_precision, self.device)  # autocast, fp16 GradScaler
        # torch DDP over each *loss* (see distributed.DDPLoss): the generator loss reduces the
        # student's gradients, the aux loss the aux optimizer's, during backward; the losses
        # are looked up at call time (a recipe's loss may be replaced on the instance)
        self.ddp_generator_loss = DDPLoss(self.dist, lambda b, s: self.method.generator_loss(b, s),
                              {"student": self.student}, self.device)
        self.ddp_aux_loss = DDPLoss(self.dist, lambda b, s: self.method.aux_loss(b, s),
                              {"method": self.method}, self.device,
                              params=params_of(self.optim.aux) if self.optim.aux else [])
        # per-step logs stay on the device; read and checked every log_every steps
        self.pending = DeferredLogs(("grad_norm", "_aux_grad_norm")
                                    if self.prec.skips_overflow else ())
        self._aux_terms: set[str] = set()
        if t.compile:
            compile_student(self.student)
        mid = float(self.student.sigmas[1]) if self.student.num_steps > 1 else None
        self.batches = BatchSource(cfg, self.method.data_needs(), self.problem, self.teacher,
                                   self.teacher_id, self.teacher_shift, self.teacher_w, mid,
                                   self.gen, self.dist, self.device,
                                   teacher_levels=loaded.sigmas,
                                   noise_scale=loaded.noise_scale)
        self.ckpt = CheckpointManager(self.run_dir / "checkpoints", t.keep_last, self.dist,
                                      self.device, t.rollbacks_per_checkpoint)
        self.losses = LossLog(self.run_dir / "losses.jsonl", enabled=self.dist.is_main)
        self.rollbacks = 0
        self.lr_scale = 1.0  # product of the rollback LR factors applied so far
        self._stop_reason: str | None = None
        self.step = 0

    # ------------------------------------------------------------ state
    def _state_objects(self) -> tuple[dict[str, Any], dict[str, Any]]:
        mods: dict[str, Any] = {"student": self.student, "ema": self.ema, "method": self.method}
        if not self.dist.fsdp:  # trainable state only: a LoRA base is the teacher's
            mods.update(student=TrainableStateView(self.student),
                        ema=TrainableStateView(self.ema))
            return state_views(mods, self.optim.optimizers(), False)
        mods, opts = state_views(mods, self.optim.optimizers(), True)
        for k, st in (("student", self.student), ("ema", self.ema)):  # full tensors, trainable
            mods[k] = FullStateView(st, keys=lambda st=st: st.trainable_state_dict().keys())
        return mods, opts

    def _schedulers(self) -> dict[str, Any]:
        return self.optim.schedulers()

    def _train_state(self) -> TrainState:
        mods, opts = self._state_objects()
        return TrainState(mods, opts, self._schedulers(), self._generators)

    def _generators(self, ck: Path | None = None) -> dict[str, torch.Generator]:
        return checkpoint_generators(self.dist, self.gen, self.step_gen, self.loss_gen, ck)

    def save_checkpoint(self) -> Path:
        """Write the full training state (refuses, with :class:`DivergenceError`, if non-finite)."""
        counters = {"step": self.step, "rollbacks": self.rollbacks, "lr_scale": self.lr_scale,
                    "teacher_id": self.teacher_id, "world_size": self.dist.world_size,
                    **self.batches.state_dict()}
        return self.ckpt.save(self.step, self._train_state(), counters,
                              self.cfg.model_dump(mode="json"))

    def _continue_from(self, counters: dict[str, Any]) -> None:
        """After a checkpoint's state is loaded: its step, the cache stream, the log."""
        self.step = int(counters["step"])
        self.batches.load_state_dict(counters)  # the cache stream continues
        self.losses.cut(self.step)  # the log matches the state

    def _load_checkpoint(self, ck: Path) -> dict[str, Any]:
        counters = self.ckpt.load(ck, self._train_state())
        self._continue_from(counters)
        return counters

    def try_resume(self) -> bool:
        """Load the newest good checkpoint; ``False`` if the run has none yet (errors: see
        :meth:`CheckpointManager.resume`)."""
        got = self.ckpt.resume(self._train_state(), self.cfg.model_dump(mode="json"),
                               self.run_dir, self.teacher_id)
        if got is None:
            return False
        ck, counters = got
        self._continue_from(counters)
        self.rollbacks = int(counters.get("rollbacks", 0))
        self.lr_scale = float(counters.get("lr_scale", 1.0))
        log.info("resumed from %s at step %d", ck, self.step)
        return True

    def request_stop(self, reason: str = "stop requested") -> None:
        """Ask the loop to checkpoint and raise :class:`TrainingInterrupted` (signal-safe)."""
        self._stop_reason = reason

    # ------------------------------------------------------------ one update
    def _named_trainable(self) -> Iterator[tuple[str, nn.Parameter]]:
        yield from (("student." + n, p) for n, p in self.student.named_parameters())
        yield from (("method." + n, p) for n, p in self.method.named_parameters())

    def _backward_step(self, loss: Tensor, logs: dict[str, Tensor],
                       opt: torch.optim.Optimizer, clip: float, phase: str, synced: bool
                       ) -> tuple[dict[str, Tensor], Tensor]:
        """zero_grad, backward (DDP reduces during it when ``synced``), clip, step. No host
        sync: loss terms and the gradient norm are checked when the logs are read
        (:meth:`_flush_logs`); with fp16 the scaler skips a step whose gradients overflowed."""
        gen = phase == "generator"  # profiler labels as before: generator phase only
        opt.zero_grad(set_to_none=True)
        with record_function("generator_backward") if gen else contextlib.nullcontext():
            self.prec.backward(loss)
        with record_function("optimizer") if gen else contextlib.nullcontext():
            params = params_of(opt)
            if not synced:
                self.dist.average_gradients(params)
            logs = self.dist.mean_logs(logs, self.device)
            self.prec.unscale_(opt)
            norm = grad_norm(params)
            torch.nn.utils.clip_grads_with_norm_(params, clip, norm)
            self.prec.step(opt)
            self.prec.update()
        return logs, norm

    def train_iteration(self) -> dict[str, float]:
        """One generator update preceded by the method's auxiliary updates; returns its logs
        as floats (a host sync; the training loop reads logs only every ``log_every``)."""
        self.pending.add(self.step + 1, self._iteration())
        last = self._flush_logs()
        return {} if last is None else last

    def _iteration(self) -> dict[str, Tensor]:
        """One generator update preceded by the auxiliary updates; the logs stay on the
        device (``_aux_grad_norm``: checked for divergence, not written)."""
        o = self.optim
        logs: dict[str, Tensor] = {}
        if o.aux is not None:
            aux_params = params_of(o.aux)  # the optimizer's own list (requires_grad flips)
            for p in aux_params:
                p.requires_grad_(True)
            for _ in range(o.aux_updates.aux_per_generator):
                with record_function("aux"):
                    batch = self.batches.next()
                    with self.prec.autocast():
                        out = self.ddp_aux_loss(batch, self.step)
                    if out is None:
                        break
                    al, anorm = self._backward_step(out[0], out[1], o.aux, o.aux_updates.aux_clip,
                                                    "auxiliary", self.ddp_aux_loss.synced)
                self._aux_terms.update(al)
                logs.update({k: v.detach() for k, v in al.items()})
                logs["_aux_grad_norm"] = anorm.detach()
            for p in aux_params:
                p.requires_grad_(False)
        with record_function("generator_forward"):
            batch = self.batches.next()
            with self.prec.autocast():
                loss, gl = self.ddp_generator_loss(batch, self.step)
        gl, gnorm = self._backward_step(loss, gl, o.g, self.cfg.train.grad_clip, "generator",
                                        self.ddp_generator_loss.synced)
        o.step_schedulers()
        ema_update(self.ema, self.student, self.cfg.train.ema_decay)
        self.step += 1
        logs.update({k: v.detach() for k, v in gl.items()})
        logs["grad_norm"] = gnorm.detach()
        return logs

    def _flush_logs(self) -> dict[str, float] | None:
        """Read every pending step's logs from the device (one transfer), append them to
        ``losses.jsonl`` and raise :class:`DivergenceError` naming the first non-finite term
        (rows from that step on are not written). Returns the newest row's terms."""
        rows, bad = self.pending.flush()
        last = None
        for r in rows:
            if bad is not None and r["step"] >= bad[0]:
                break
            last = {k: v for k, v in r.items() if k != "step" and not k.startswith("_")}
            self.losses.append(int(r["step"]), last)
        if bad is not None:
            step, term, value = bad
            if term in ("grad_norm", "_aux_grad_norm"):
                gen = term == "grad_norm"
                opt = self.optim.g if gen else self.optim.aux
                raise nonfinite_gradient(params_of(opt) if opt is not None else [],
                                         "generator" if gen else "auxiliary", value, step,
                                         self._named_trainable)
            phase = "auxiliary" if term in self._aux_terms else "generator"
            raise DivergenceError(f"{phase} loss term {term!r} is {value} at step {step}")
        return last

    # ------------------------------------------------------------ the loop
    def train(self) -> Student:
        """Run (or resume) training; returns the EMA student."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        main, t = self.dist.is_main, self.cfg.train
        with self.dist.main_first():  # rank 0 builds a missing teacher cache, the others load it
            self.batches.prepare(self.progress)
        # resume after the data are prepared, so that nothing preparing them draws from the
        # global RNG shifts the restored RNG states (bit-identical continuation)
        resumed = self.try_resume() if self.resume else False
        if not resumed:
            self.losses.cut(0)  # a fresh start (or no checkpoint yet): no rows from before
        if main:
            atomic_write_text(self.run_dir / "config.yaml", dump_yaml(self.cfg))
        first = t.on_divergence == "rollback" and not self.ckpt.list()
        if self.dist.all_flags(first, self.device)[1]:
            self.save_checkpoint()  # something to roll back to
        writer = ScalarWriter(self.run_dir / "tb", main, self.step if resumed else None)
        t0 = time.perf_counter()
        bar = tqdm(total=t.iterations, initial=self.step, desc=f"distill[{self.cfg.method}]",
                   disable=not (self.progress and main))
        self.losses.open()
        try:
            while self.step < t.iterations:
                try:
                    self.pending.add(self.step + 1, self._iteration())
                    log_due = self.step % t.log_every == 0 or self.step == t.iterations
                    ckpt_due = bool(t.ckpt_every) and self.step % t.ckpt_every == 0
                    stop = self._stop_requested(log_due or ckpt_due)
                    # the loop's only host syncs: every log_every steps, before a checkpoint
                    # (a state is never written unchecked) and before stopping
                    logs = self._flush_logs() if log_due or ckpt_due or stop else None
                except DivergenceError as e:
                    self._on_divergence(e)
                    bar.n = self.step
                    continue
                if log_due and logs is not None:
                    self.losses.flush()
                    writer.scalars(logs, self.step)
                    bar.set_postfix({k: f"{v:.3g}" for k, v in logs.items()
                                     if k.startswith(("g_total", "d_loss", "fake_loss"))})
                if t.sample_every and self.step % t.sample_every == 0:
                    self.write_samples(f"step{self.step:06d}")
                if ckpt_due:
                    self.losses.flush()
                    try:
                        self.save_checkpoint()
                    except DivergenceError as e:  # finite losses but a non-finite state
                        self._on_divergence(DivergenceError(f"{e} after step {self.step}"))
                        bar.n = self.step
                        continue
                bar.update(1)
                if stop:
                    self.losses.flush()
                    ck = self.save_checkpoint()
                    log.warning("%s: checkpoint %s", self._stop_reason, ck)
                    raise TrainingInterrupted(self.step, ck)
        finally:
            self.losses.close()
            bar.close()
            writer.close()
        self.save_checkpoint()
        self.seconds = time.perf_counter() - t0
        self.ema.eval()
        ema = Snapshot(FullStateView(self.ema).state_dict()) if self.dist.fsdp else self.ema
        if main:
            save_student_file(self.run_dir / "student.safetensors", ema,  # type: ignore[arg-type]
                         student_file_config(self.cfg, self.teacher_cfg, self.ema.sigmas))
        self.write_samples("final")
        self.dist.barrier()  # every rank returns once the files exist
        return self.ema

    def _stop_requested(self, sync_due: bool) -> bool:
        """A stop was requested. One process: checked every step. Distributed: on any rank,
        agreed by a collective only at ``sync_due`` steps (log / checkpoint steps, which sync
        anyway), so all ranks stop at the same step without a per-step host sync."""
        if not self.dist.enabled:
            return self._stop_reason is not None
        return sync_due and self.dist.all_flags(self._stop_reason is not None, self.device)[1]

    def _on_divergence(self, err: DivergenceError) -> None:
        """Stop with a message naming the last good checkpoint, or roll back."""
        t = self.cfg.train
        self.pending.clear()  # rows of the discarded steps
        self.losses.flush()
        last = self.ckpt.latest_good()
        where = f"last good checkpoint: {last}" if last else "no checkpoint was written"
        if t.on_divergence != "rollback" or last is None:
            raise DivergenceError(f"{err}; {where} (lower train.lr, or set "
                                  "train.on_divergence=rollback)") from None
        ck = self.ckpt.rollback_target()
        if self.rollbacks >= t.max_rollbacks or ck is None:
            raise DivergenceError(f"{err}; gave up after {self.rollbacks} rollbacks "
                                  f"(train.max_rollbacks); {where}") from None
        rollbacks, scale = self.rollbacks + 1, self.lr_scale * t.rollback_lr_factor
        counters = self._load_checkpoint(ck)
        self.ckpt.note_rollback(ck)
        self.optim.scale_lr(scale / float(counters.get("lr_scale", 1.0)))
        self.rollbacks, self.lr_scale = rollbacks, scale
        log.warning("%s; rolled back to %s (step %d), learning rates x%g (rollback %d of %d)",
                    err, ck, self.step, scale, rollbacks, t.max_rollbacks)

    def write_samples(self, tag: str, n: int = 100) -> None:
        if not (self.dist.is_main or self.dist.fsdp):  # FSDP: every rank runs the sharded EMA
            return
        path = self.run_dir / "samples" / f"{tag}.png" if self.dist.is_main else None
        write_samples(path, self.ema, self.problem, self.cfg.eval.seed, self.device,
                      f"{self.cfg.method} step {self.step}", n)
