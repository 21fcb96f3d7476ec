"""Evaluation while training (``train.eval_every``): every N generator updates the EMA
student is scored on one fixed grid of ``eval.prompts`` x ``eval.seeds`` (prompts, or classes
for class-conditional data; fixed noise) against the teacher's own samples, computed once
(:class:`~fewstep.evaluation.t2i_eval.FixedEval`): FID-T, FID-T's two-draw floor, diversity
and its ratio to the teacher's, image statistics (saturation, brightness, contrast) and, with
``eval.clip`` or a ``clip:`` feature space, the CLIP score.

Each evaluation goes to the trackers (``eval/<figure>`` curves, the image grid as
``eval/grid``), to ``RUN/eval.jsonl`` (one row per evaluation, cut back on resume like
``losses.jsonl``) and to ``RUN/samples/eval_step<N>.png``; a warning -- diversity collapse, or
an image statistic outside the teacher's 5-95 % range, e.g. over-saturation -- is logged.

Runs on rank 0 (``ddp``); with ``fsdp`` (a sharded EMA) it is skipped with a warning.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch

from fewstep.distill.config import DistillConfig
from fewstep.distill.engine.run_logs import read_history
from fewstep.distill.engine.trackers import Trackers
from fewstep.errors import ConfigError
from fewstep.evaluation.features import FeatureSpace, named_feature_space, resolve_feature_space
from fewstep.evaluation.t2i_eval import FixedEval
from fewstep.utils.viz import image_grid, save_grid

log = logging.getLogger(__name__)
EVAL_LOG = "eval.jsonl"


def eval_space(cfg: DistillConfig, problem: Any, device: torch.device) -> FeatureSpace:
    """The feature space of ``eval.features`` for the run's data (prompts: ``auto`` =
    pixels of the decoded images)."""
    spec = cfg.eval.features
    if getattr(problem, "num_prompts", 0):
        named = named_feature_space("pixels" if spec == "auto" else spec, device)
        if named is None:
            raise ConfigError(f"eval.features: {spec} does not apply to prompt runs (use "
                              "pixels, clip:FOLDER, torchscript:FILE or builder:pkg.mod:fn)")
        return named
    return resolve_feature_space(problem, spec, device)


class RunEval:
    """The fixed evaluation of a run (module docstring); call it with the EMA student."""

    def __init__(self, cfg: DistillConfig, teacher: Any, run_dir: Path,
                 device: torch.device) -> None:
        problem = teacher.problem
        if problem.is_toy:
            raise ConfigError("train.eval_every: 2-D toy data have no images to evaluate; set "
                              "train.eval_every=0 and use fewstep eval")
        e = cfg.eval
        clip = named_feature_space(f"clip:{e.clip}", device) if e.clip else None
        self.fixed = FixedEval(teacher, eval_space(cfg, problem, device), e.prompts, e.seeds,
                               e.seed, clip, None, device, collapse_below=e.collapse_below)
        self.run_dir = run_dir

    @classmethod
    def for_run(cls, trainer: Any) -> RunEval | None:
        """The evaluator of a :class:`~fewstep.distill.trainer.Trainer` about to train
        (``eval.jsonl`` cut back to the step it starts from), or ``None`` (off, not rank 0,
        or FSDP)."""
        cfg, dist = trainer.cfg, trainer.dist
        if not cfg.train.eval_every or not dist.is_main:
            return None
        if dist.fsdp:
            log.warning("train.eval_every: skipped with train.distributed fsdp (the EMA "
                        "student is sharded); evaluate the finished run with fewstep eval --run")
            return None
        evaluator = cls(cfg, trainer.teacher, trainer.run_dir, trainer.device)
        evaluator.cut(trainer.step)
        return evaluator

    def cut(self, step: int) -> None:
        """Drop ``eval.jsonl`` rows after ``step`` (resume, rollback)."""
        read_history(self.run_dir / EVAL_LOG, step)

    @torch.no_grad()
    def __call__(self, student: Any, step: int, trackers: Trackers) -> dict[str, Any]:
        figures, images = self.fixed(student)
        nums = {k: float(v) for k, v in figures.items()
                if isinstance(v, int | float) and not isinstance(v, bool)}
        trackers.scalars(nums, step, prefix="eval/")
        nrow = int(self.fixed.grid.ids.unique().numel())
        seeds = len(self.fixed.grid.ids) // max(nrow, 1)
        trackers.image("eval/grid", image_grid(images, max(seeds, 1)), step)
        save_grid(self.run_dir / "samples" / f"eval_step{step:06d}.png", images,
                  nrow=max(seeds, 1), title=f"step {step}: one row per prompt")
        for w in figures["warnings"]:
            log.warning("eval at step %d: %s", step, w)
        if figures["warnings"]:
            trackers.text("eval/warnings", "\n".join(figures["warnings"]), step)
        with open(self.run_dir / EVAL_LOG, "a", encoding="utf-8") as f:
            f.write(json.dumps({"step": step, **figures}) + "\n")
        return figures


__all__ = ["EVAL_LOG", "RunEval", "eval_space"]
