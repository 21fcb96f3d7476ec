"""The distillation training loop: one loop for every method (``docs/tour.md`` follows one
batch through it).

``Trainer(cfg, run_dir).train()`` loads the teacher (one :class:`~fewstep.teachers.LoadedTeacher`),
builds the student and its EMA (:mod:`fewstep.student`) and the method
(:mod:`fewstep.distill.methods`), then runs per generator update: the method's auxiliary
updates, one student update, the EMA, a ``losses.jsonl`` row, samples and checkpoints. Everything
around the loop is in :mod:`fewstep.distill.engine`.

Run folder: ``config.yaml``, ``checkpoints/``, ``tb/``, ``samples/``, ``losses.jsonl``,
``student.safetensors`` (the EMA student). Resume is bit-identical on CPU; NaN / Inf raises
:class:`DivergenceError` naming the step and the term, or rolls back (``train.on_divergence``);
:meth:`Trainer.request_stop` (SIGTERM) checkpoints and raises :class:`TrainingInterrupted` at the
next step boundary. Host syncs: loss terms and gradient norms stay on the device and are read --
and checked -- every ``train.log_every`` steps and before each checkpoint.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.profiler import record_function
from tqdm.auto import tqdm

from fewstep.core.denoiser import Denoiser
from fewstep.distill.config import DistillConfig, load_run_teacher
from fewstep.distill.engine.batches import BatchSource
from fewstep.distill.engine.checkpoints import CheckpointManager, TrainState
from fewstep.distill.engine.distributed import DDPLoss, init_distributed
from fewstep.distill.engine.divergence import flush_logs
from fewstep.distill.engine.fsdp import FullStateView, Snapshot
from fewstep.distill.engine.optim import Optimizers, backward_step, params_of
from fewstep.distill.engine.precision import DeferredLogs, Precision
from fewstep.distill.engine.replicas import distribute
from fewstep.distill.engine.run_eval import RunEval
from fewstep.distill.engine.run_logs import LossLog, write_samples
from fewstep.distill.engine.run_state import RunGenerators, train_state
from fewstep.distill.engine.trackers import Trackers
from fewstep.distill.methods import DistillContext, DistillMethod, method_class
from fewstep.errors import DivergenceError, TrainingInterrupted
from fewstep.student.factory import build_student, compile_student, enable_gradient_checkpointing
from fewstep.student.student import Student
from fewstep.student.student_file import save_student_file, student_file_config
from fewstep.utils.config_files import dump_yaml
from fewstep.utils.ema import ema_update
from fewstep.utils.files import atomic_write_text

log = logging.getLogger(__name__)


class Trainer:
    """Builds a run from a validated :class:`DistillConfig` and trains it."""

    def __init__(self, cfg: DistillConfig, run_dir: str | Path, progress: bool = True,
                 resume: bool = False) -> None:
        self.cfg, self.run_dir, self.progress, self.resume = cfg, Path(run_dir), progress, resume
        t = cfg.train
        self.dist, self.device = init_distributed(torch.device(t.device), t.distributed,
                                                  t.batch_size)
        self.rng = RunGenerators.seeded(t.seed, self.dist)
        with self.dist.main_first():  # rank 0 fills a missing prompt-embedding cache first
            self.teacher = load_run_teacher(cfg, self.device)
        den = self.teacher.denoiser
        self.student = build_student(den, cfg.student, cfg.teacher.steps, self.teacher.shift,
                                     self.teacher.sigmas).to(self.device)
        self.student.train()
        self.ema = self.student.ema_copy()  # trainables copied, a LoRA base shared
        ctx = DistillContext.for_run(cfg, self.teacher, self.student, self.device, self.rng.loss)
        self.method: DistillMethod = method_class(cfg.method)(ctx).to(self.device)
        distribute(self.dist, self.student, self.ema, self.method, self.rng.step,
                   {id(p) for p in den.parameters()})
        if t.gradient_checkpointing:
            others = [m for m in self.method.modules() if isinstance(m, Denoiser)]
            enable_gradient_checkpointing(self.student, [*others, den])
        if t.compile:
            compile_student(self.student)
        self.optim = Optimizers.build(self.student, self.method.aux_updates(), t, self.device)
        self.prec = Precision(t.mixed_precision, self.device)  # autocast, fp16 GradScaler
        # torch DDP over each *loss* (distributed.DDPLoss): the generator loss reduces the
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
        mid = float(self.student.sigmas[1]) if self.student.num_steps > 1 else None
        self.batches = BatchSource(cfg, self.method.data_needs(), self.teacher, mid,
                                   self.rng.data, self.dist, self.device)
        self.ckpt = CheckpointManager(self.run_dir / "checkpoints", t.keep_last, self.dist,
                                      self.device, t.rollbacks_per_checkpoint)
        self.losses = LossLog(self.run_dir / "losses.jsonl", enabled=self.dist.is_main)
        self.rollbacks, self.lr_scale = 0, 1.0  # lr_scale: product of the rollback factors
        self._stop_reason: str | None = None
        self.step = 0

    # ------------------------------------------------------------ checkpoints
    def state(self) -> TrainState:
        """The objects a checkpoint saves and restores."""
        return train_state(self.student, self.ema, self.method, self.optim, self.dist,
                           self.rng, self.prec)

    def save_checkpoint(self) -> Path:
        """Write the full training state (refuses, with :class:`DivergenceError`, if non-finite)."""
        counters = {"step": self.step, "rollbacks": self.rollbacks, "lr_scale": self.lr_scale,
                    "teacher_id": self.teacher.identity, "world_size": self.dist.world_size,
                    **self.batches.state_dict()}
        return self.ckpt.save(self.step, self.state(), counters,
                              self.cfg.model_dump(mode="json"))

    def _continue_from(self, counters: dict[str, Any]) -> None:
        """After a checkpoint's state is loaded: its step, the cache stream, the log."""
        self.step = int(counters["step"])
        self.batches.load_state_dict(counters)
        self.losses.cut(self.step)

    def try_resume(self) -> bool:
        """Load the newest good checkpoint; ``False`` if the run has none yet (errors: see
        :meth:`CheckpointManager.resume`)."""
        got = self.ckpt.resume(self.state(), self.cfg.model_dump(mode="json"), self.run_dir,
                               self.teacher.identity)
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
    def train_iteration(self) -> dict[str, float]:
        """One generator update preceded by the method's auxiliary updates; returns its logs
        as floats (a host sync; the training loop reads logs only every ``log_every``)."""
        self.pending.add(self.step + 1, self._iteration())
        return self._flush_logs() or {}

    def _iteration(self) -> dict[str, Tensor]:
        """The aux updates, then one generator update and the EMA; logs stay on the device
        (``_aux_grad_norm``: checked for divergence, not written)."""
        o, logs = self.optim, {}
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
                    al, anorm = backward_step(out[0], out[1], o.aux, o.aux_updates.aux_clip,
                                              self.prec, self.dist, self.device,
                                              self.ddp_aux_loss.synced, profile=False)
                self._aux_terms.update(al)
                logs.update({k: v.detach() for k, v in al.items()})
                logs["_aux_grad_norm"] = anorm.detach()
            for p in aux_params:
                p.requires_grad_(False)
        with record_function("generator_forward"):
            batch = self.batches.next()
            with self.prec.autocast():
                loss, gl = self.ddp_generator_loss(batch, self.step)
        gl, gnorm = backward_step(loss, gl, o.g, self.cfg.train.grad_clip, self.prec,
                                  self.dist, self.device, self.ddp_generator_loss.synced)
        o.step_schedulers()
        ema_update(self.ema, self.student, self.cfg.train.ema_decay)
        self.step += 1
        logs.update({k: v.detach() for k, v in gl.items()})
        logs["grad_norm"] = gnorm.detach()
        return logs

    def _flush_logs(self) -> dict[str, float] | None:
        o, mods = self.optim, {"student": self.student, "method": self.method}

        def named() -> Iterator[tuple[str, nn.Parameter]]:
            return ((f"{k}.{n}", p) for k, m in mods.items() for n, p in m.named_parameters())
        return flush_logs(self.pending, self.losses, self._aux_terms, params_of(o.g),
                          params_of(o.aux) if o.aux is not None else [], named)

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
        writer = Trackers(self.run_dir, self.cfg, main, self.step if resumed else None)
        evals = RunEval.for_run(self)  # train.eval_every (fewstep/distill/engine/run_eval.py)
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
                if evals is not None and self.step % t.eval_every == 0:
                    evals(self.ema, self.step, writer)
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
            save_student_file(self.run_dir / "student.safetensors", ema,
                              student_file_config(self.teacher.config, self.cfg.student,
                                                  self.ema.sigmas, self.cfg.method,
                                                  self.cfg.data, self.teacher.identity))
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
        """Stop with a message naming the last good checkpoint, or roll back to one with lower
        learning rates (:meth:`CheckpointManager.roll_back`)."""
        self.pending.clear()  # rows of the discarded steps
        self.losses.flush()
        counters, self.rollbacks, scale = self.ckpt.roll_back(
            err, self.state(), self.cfg.train, self.rollbacks, self.lr_scale)
        self._continue_from(counters)
        self.optim.scale_lr(scale / float(counters.get("lr_scale", 1.0)))
        self.lr_scale = scale

    def write_samples(self, tag: str, n: int = 100) -> None:
        if not (self.dist.is_main or self.dist.fsdp):  # FSDP: every rank runs the sharded EMA
            return
        path = self.run_dir / "samples" / f"{tag}.png" if self.dist.is_main else None
        write_samples(path, self.ema, self.teacher.problem, self.cfg.eval.seed, self.device,
                      f"{self.cfg.method} step {self.step}", n)


__all__ = ["Trainer"]
