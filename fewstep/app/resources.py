"""A distillation's sizes checked before anything is allocated, with the planner's own
arithmetic (:func:`fewstep.app.plan.build_plan`: every model built on the ``meta`` device).

* memory: the plan's per-device total for this config (weights, gradients, Adam moments, EMA,
  activations, one batch of cache rows) against what the training device has available
  (:func:`fewstep.utils.resources.available_memory`);
* disk: the teacher-sample cache (``cache.size`` rows) against the free space of ``cache.dir``
  (plus what the folder already holds: an existing cache is reused).

Each refusal names the field that sized it (``train.batch_size``, ``cache.size``, ...), the
figure needed and the figure available. The plan is an estimate; a config whose plan cannot be
built here (e.g. a teacher only reachable online) is not checked.
"""

from __future__ import annotations

import logging

from fewstep.distill.config import DistillConfig
from fewstep.utils.resources import check_disk, check_memory, folder_bytes, gib

log = logging.getLogger(__name__)


#: plan model name -> the setting that sizes it
_SIZED_BY = {"teacher": "teacher (its network size)", "student": "student (its network size)",
             "ema": "student (its network size)",
             "fake_score": "teacher (the fake score network is a copy of it)",
             "heads": "gan.head_hidden (the discriminator heads)",
             "vae": "teacher.pretrained (its VAE)", "text_encoder": "teacher.pretrained"}


def _blame(plan: object, row: object) -> str:
    """The setting that sized the largest part of a plan row: the per-device batch
    (activations, cache rows) or the largest model."""
    act = getattr(row, "activations", 0.0) + getattr(row, "data", 0.0)
    models = getattr(plan, "models", [])
    biggest = max(models, key=lambda m: m.total, default=None)
    rest = getattr(row, "total", 0.0) - act
    if biggest is None or act >= rest:
        return "train.batch_size"
    return _SIZED_BY.get(biggest.name, biggest.name)


def check_distill_resources(cfg: DistillConfig) -> None:
    """Refuse (one line, exit 2) a run whose memory or cache cannot fit (module docstring)."""
    from fewstep.app.plan import build_plan

    try:
        plan = build_plan(cfg, 1)
    except Exception as e:  # the plan is a guard, not a validator: the run reports its own
        log.debug("resource check skipped: %s", e)
        return
    row = next((r for r in plan.rows if r.configured), None)
    if row is not None:
        field = _blame(plan, row)
        what = (f"plan per device: weights {gib(row.weights)}, grads {gib(row.grads)}, "
                f"Adam {gib(row.adam)}, EMA {gib(row.ema)}, activations "
                f"{gib(row.activations)}, data {gib(row.data)} GiB")
        check_memory(row.total, cfg.train.device, field, what)
    disk = plan.host.get("teacher_cache_disk")
    if disk:
        check_disk(disk, cfg.cache.dir, "cache.size",
                   f"{cfg.cache.size} teacher samples of {disk / cfg.cache.size:.0f} bytes in "
                   "cache.dir", reusable=folder_bytes(cfg.cache.dir))


__all__ = ["check_distill_resources"]
