"""The checkpoint manager of a run: atomic save (never a non-finite state), verify, prune,
resume and rollback targets. The file format is :mod:`fewstep.distill.engine.state`.

Files: ``<run>/checkpoints/ckpt_<step:08d>.safetensors``. With N processes every rank takes
part in a save (gathers are collectives) and rank 0 writes; every rank loads.

Rollback targets (:meth:`CheckpointManager.rollback_target`): the newest good checkpoint, unless
the run has already been rolled back to it ``rollbacks_per_checkpoint`` times without writing a
newer one -- then the next older good one (walking back), and the checkpoints newer than the
target are deleted (they lie on the diverging branch; a resume must not pick them).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, MutableSequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.optim.lr_scheduler import LRScheduler

from fewstep.distill.config import TrainSpec
from fewstep.distill.engine.distributed import DistEnv
from fewstep.distill.engine.fsdp import FullOptimizerView, FullStateView, Snapshot
from fewstep.distill.engine.state import (
    CKPT_RE,
    checkpoint_config,
    list_checkpoints,
    load_train_state,
    prune_checkpoints,
    save_train_state,
)
from fewstep.errors import CheckpointError, ConfigError, DivergenceError
from fewstep.teachers.base import same_teacher
from fewstep.utils.files import load_tensors

log = logging.getLogger(__name__)

#: config keys that may differ between a checkpoint and a resumed run
RESUME_MUTABLE = ("train.iterations", "train.log_every", "train.sample_every",
                  "train.ckpt_every", "train.keep_last", "train.on_divergence",
                  "train.rollback_lr_factor", "train.max_rollbacks",
                  "train.rollbacks_per_checkpoint", "train.device", "train.compile",
                  "train.distributed", "teacher.path", "teacher.pretrained", "cache.dir",
                  "eval.")


@dataclass
class TrainState:
    """What a checkpoint holds, as live objects
    (:func:`fewstep.distill.engine.state.save_train_state`).

    ``generators(ck)``: the generators to save (``ck=None``) or to restore from ``ck``."""

    modules: dict[str, Any]
    optimizers: dict[str, Any]
    schedulers: dict[str, LRScheduler]
    generators: Callable[[Path | None], dict[str, torch.Generator]]


def state_views(modules: dict[str, Any], optimizers: dict[str, Any], fsdp: bool
                ) -> tuple[dict[str, Any], dict[str, Any]]:
    """The objects a checkpoint reads and writes: as they are, or with FSDP views that give
    and take full tensors (gathering / sharding are collectives)."""
    if not fsdp:
        return modules, optimizers
    return ({k: FullStateView(m) for k, m in modules.items()},
            {k: FullOptimizerView(o) for k, o in optimizers.items()})


def step_of(path: Path) -> int:
    m = CKPT_RE.match(path.name)
    if m is None:
        raise ValueError(f"{path} is not a checkpoint file name")
    return int(m.group(1))


class CheckpointManager:
    """Save / find / load the checkpoints in ``folder`` (``dist``: the process group view)."""

    def __init__(self, folder: Path, keep_last: int, dist: DistEnv, device: torch.device,
                 rollbacks_per_checkpoint: int = 1) -> None:
        self.folder = folder
        self.keep_last = keep_last
        self.dist, self.device = dist, device
        self.rollbacks_per_checkpoint = rollbacks_per_checkpoint
        self._tried: dict[str, int] = {}  # checkpoint name -> rollbacks to it since progress

    def path(self, step: int) -> Path:
        return self.folder / f"ckpt_{step:08d}.safetensors"

    def list(self) -> list[Path]:
        """All checkpoint files, oldest first."""
        return list_checkpoints(self.folder)

    def good(self, problems: MutableSequence[str] | None = None) -> Iterator[Path]:
        """Checkpoints that pass their checksum, newest first; each skipped one is logged and
        appended to ``problems``."""
        for p in reversed(self.list()):
            try:
                load_tensors(p, kind="train_state")
            except CheckpointError as e:
                log.warning("skipping checkpoint: %s", e)
                if problems is not None:
                    problems.append(str(e))
                continue
            yield p

    def latest_good(self, problems: MutableSequence[str] | None = None) -> Path | None:
        return next(self.good(problems), None)

    def save(self, step: int, state: TrainState, counters: dict[str, Any],
             config: dict[str, Any]) -> Path:
        """Write the full state at ``step`` and prune; :class:`DivergenceError` (nothing
        written) if it holds NaN / Inf. Every rank calls it."""
        path = self.path(step)
        mods, opts = state.modules, state.optimizers
        gens = state.generators(None)
        if self.dist.fsdp:  # every rank gathers; rank 0 writes
            mods = {k: Snapshot(m.state_dict()) for k, m in mods.items()}
            opts = {k: Snapshot(o.state_dict()) for k, o in opts.items()}
        err: DivergenceError | None = None
        if self.dist.is_main:
            try:
                save_train_state(path, mods, opts, gens, counters, config, state.schedulers)
                prune_checkpoints(self.folder, self.keep_last)
            except DivergenceError as e:
                if not self.dist.enabled:
                    raise
                err = e
        ok, _ = self.dist.all_flags(err is None, self.device)  # the file exists for all
        if not ok:
            raise err or DivergenceError(f"refusing to write checkpoint {path.name}: the "
                                         "training state holds NaN or Inf")
        self._tried.clear()  # progress: a rollback now targets the new checkpoint first
        return path

    def load(self, ck: Path, state: TrainState) -> dict[str, Any]:
        """Restore ``state`` from ``ck``; returns the counters."""
        return load_train_state(ck, state.modules, state.optimizers, state.generators(ck),
                                state.schedulers)

    def resume(self, state: TrainState, config: dict[str, Any], run_dir: Path, teacher_id: str
               ) -> tuple[Path, dict[str, Any]] | None:
        """Load the newest good checkpoint into ``state``: ``(path, counters)``, or ``None``
        when the run has no checkpoint yet.

        :class:`CheckpointError` if checkpoints exist but none is usable or the checkpoint was
        trained with another teacher; :class:`ConfigError` if ``config`` differs from the
        checkpoint's outside :data:`RESUME_MUTABLE`."""
        problems: list[str] = []
        ck = self.latest_good(problems)
        if ck is None:
            if problems:
                raise CheckpointError(f"resume: no usable checkpoint in {self.folder} "
                                      f"({'; '.join(problems)}); delete them to start over")
            return None
        self.check_resume_config(ck, config, run_dir)
        counters = self.load(ck, state)
        same = same_teacher(counters.get("teacher_id"), teacher_id)
        if same is False:
            raise CheckpointError(f"resume: {ck} was trained with another teacher (its weights "
                                  "differ from teacher.path)")
        if same is None and counters.get("teacher_id"):
            log.warning("resume: %s predates content fingerprints of teachers; that the teacher "
                        "is unchanged cannot be checked", ck)
        return ck, counters

    def check_resume_config(self, ck: Path, config: dict[str, Any], run_dir: Path) -> None:
        """:class:`ConfigError` if ``config`` differs from ``ck``'s outside
        :data:`RESUME_MUTABLE`."""
        old = flatten(checkpoint_config(ck))
        new = flatten(config)
        diff = [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)
                and not k.startswith(RESUME_MUTABLE)]
        if diff:
            k = diff[0]
            more = f" (and {len(diff) - 1} more: {', '.join(diff[1:4])})" if len(diff) > 1 else ""
            raise ConfigError(f"{k}: is {new.get(k)!r} but the run in {run_dir} was "
                              f"trained with {old.get(k)!r}{more}; a resumed run keeps its "
                              "config (use a new --out to change it)")

    def roll_back(self, err: DivergenceError, state: TrainState, t: TrainSpec, rollbacks: int,
                  lr_scale: float) -> tuple[dict[str, Any], int, float]:
        """After ``err``: re-raise it naming the last good checkpoint (``train.on_divergence:
        stop``, no checkpoint, or ``train.max_rollbacks`` spent), or load the rollback target
        into ``state``. Returns ``(its counters, rollbacks + 1, lr_scale * rollback factor)``."""
        last = self.latest_good()
        where = f"last good checkpoint: {last}" if last else "no checkpoint was written"
        if t.on_divergence != "rollback" or last is None:
            raise DivergenceError(f"{err}; {where} (lower train.lr, or set "
                                  "train.on_divergence=rollback)") from None
        ck = self.rollback_target()
        if rollbacks >= t.max_rollbacks or ck is None:
            raise DivergenceError(f"{err}; gave up after {rollbacks} rollbacks "
                                  f"(train.max_rollbacks); {where}") from None
        counters = self.load(ck, state)
        self.note_rollback(ck)
        scale = lr_scale * t.rollback_lr_factor
        log.warning("%s; rolled back to %s (step %d), learning rates x%g (rollback %d of %d)",
                    err, ck, int(counters["step"]), scale, rollbacks + 1, t.max_rollbacks)
        return counters, rollbacks + 1, scale

    def rollback_target(self) -> Path | None:
        """The checkpoint to roll back to (see the module docstring), or ``None``."""
        for ck in self.good():
            if self._tried.get(ck.name, 0) < self.rollbacks_per_checkpoint:
                return ck
        return None

    def note_rollback(self, ck: Path) -> None:
        """Record a rollback to ``ck``; delete (rank 0) the checkpoints newer than it."""
        self._tried[ck.name] = self._tried.get(ck.name, 0) + 1
        if self.dist.is_main:
            for p in self.list():
                if step_of(p) > step_of(ck):
                    log.warning("rollback: deleting %s (newer than %s, on the diverging "
                                "branch)", p, ck.name)
                    p.unlink(missing_ok=True)
        self.dist.barrier()


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out
