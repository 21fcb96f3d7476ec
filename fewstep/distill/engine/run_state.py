"""What a run's checkpoint holds, assembled from the live objects of the loop.

* :class:`RunGenerators` -- the random streams of a run: the data stream (batches, cache
  order), the loss stream (noise and levels drawn inside the losses; with N processes one per
  rank) and, with N processes, the step-choice stream every rank shares. Seeded from
  ``train.seed``; all of them are checkpointed, so a resumed run continues bit-identically.
* :func:`train_state` -- the :class:`~fewstep.distill.engine.checkpoints.TrainState` of the
  student, its EMA, the method's auxiliary networks, the optimizers and (fp16) the loss
  scaler: trainable state only (a LoRA student's base is the teacher's), or full tensors
  through FSDP views. Every precision resumes bit-identically.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from fewstep.distill.engine.checkpoints import TrainState, state_views
from fewstep.distill.engine.distributed import DistEnv
from fewstep.distill.engine.fsdp import FullStateView
from fewstep.distill.engine.optim import Optimizers
from fewstep.distill.engine.precision import Precision, ScalerState
from fewstep.student.student import Student, TrainableStateView
from fewstep.utils.files import read_metadata

log = logging.getLogger(__name__)


@dataclass
class RunGenerators:
    """The random streams of one run (see the module docstring)."""

    data: torch.Generator
    loss: torch.Generator
    step: torch.Generator | None = None

    @classmethod
    def seeded(cls, seed: int, dist: DistEnv) -> RunGenerators:
        """Seed torch's, numpy's and Python's global RNGs and make the run's streams: with one
        process the losses draw from the data stream itself; with N processes each rank has its
        own loss stream and all share one step-choice stream."""
        torch.manual_seed(seed)
        np.random.seed(seed)
        random.seed(seed)
        data = torch.Generator().manual_seed(seed)
        if not dist.enabled:
            return cls(data, data)
        return cls(data, torch.Generator().manual_seed(seed + 7919 * (1 + dist.rank)),
                   torch.Generator().manual_seed(seed + 104729))

    def for_checkpoint(self, dist: DistEnv, ck: Path | None = None
                       ) -> dict[str, torch.Generator]:
        """The generators a checkpoint records: to save (``ck=None``; gathering the ranks'
        loss streams is a collective) or to restore from ``ck`` (a checkpoint of another world
        size restarts the loss streams; the data order continues)."""
        gens = {"data": self.data}
        if not dist.enabled:
            return gens
        assert self.step is not None
        gens["step"] = self.step
        if ck is None:
            for r, st in enumerate(dist.gather_generator_states(self.loss)):
                gens[f"loss{r}"] = torch.Generator()
                gens[f"loss{r}"].set_state(st)
            return gens
        saved = int(json.loads(read_metadata(ck).get("counters", "{}")).get("world_size", 1))
        if saved == dist.world_size:
            gens[f"loss{dist.rank}"] = self.loss
        else:
            log.warning("resume: %s was written by %d process(es), this run has %d; the "
                        "per-rank loss noise streams restart (the data order continues)",
                        ck, saved, dist.world_size)
            if saved == 1:
                gens.pop("step")
        return gens


def _trainable_keys(student: Student) -> Callable[[], Iterable[str]]:
    """The names of ``student``'s trainable state, read when called."""
    return lambda: student.trainable_state_dict().keys()


def train_state(student: Student, ema: Student, method: nn.Module, optim: Optimizers,
                dist: DistEnv, gens: RunGenerators, prec: Precision | None = None
                ) -> TrainState:
    """The objects a checkpoint saves and restores (see the module docstring); with fp16,
    ``prec``'s loss scaler too (:class:`~fewstep.distill.engine.precision.ScalerState`)."""
    mods: dict[str, object] = {"student": student, "ema": ema, "method": method}
    if not dist.fsdp:  # trainable state only: a LoRA base is the teacher's
        mods.update(student=TrainableStateView(student), ema=TrainableStateView(ema))
        mods, opts = state_views(mods, optim.optimizers(), False)
    else:
        mods, opts = state_views(mods, optim.optimizers(), True)
        for k, st in (("student", student), ("ema", ema)):  # full tensors, trainable keys
            mods[k] = FullStateView(st, keys=_trainable_keys(st))
    if prec is not None and prec.scaler is not None:
        mods["grad_scaler"] = ScalerState(prec)
    return TrainState(mods, opts, optim.schedulers(),
                      lambda ck: gens.for_checkpoint(dist, ck))


__all__ = ["RunGenerators", "train_state"]
