"""Where a run's curves go (``train.trackers``), on rank 0 only:

* ``tensorboard`` (default): ``RUN/tb`` -- losses as ``loss/<term>``, the fixed evaluation as
  ``eval/<figure>``, its image grid as ``eval/grid`` and its warnings as text;
* ``wandb``: Weights & Biases, an optional dependency (``pip install wandb``). The run is
  offline unless ``WANDB_MODE`` says otherwise (``online`` needs ``wandb login``), in project
  ``WANDB_PROJECT`` (default ``fewstep``), under ``RUN/wandb``, with the run's config; a
  resumed run continues the same W&B run (its id is derived from the run folder).
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Any, cast

from torch import Tensor

from fewstep.distill.engine.run_logs import ScalarWriter
from fewstep.errors import ConfigError

TRACKERS = ("tensorboard", "wandb")


class Trackers:
    """The trackers of ``cfg.train.trackers`` (a no-op on ranks other than 0). ``purge_step``:
    the step a resumed run continues from (TensorBoard drops its later events)."""

    def __init__(self, run_dir: Path, cfg: Any, enabled: bool,
                 purge_step: int | None = None) -> None:
        names = list(cfg.train.trackers)
        self.tb = ScalarWriter(run_dir / "tb", enabled and "tensorboard" in names, purge_step)
        self.wandb: Any = None
        if enabled and "wandb" in names:
            self.wandb = _start_wandb(run_dir, cfg.model_dump(mode="json"))

    def scalars(self, logs: dict[str, float], step: int, prefix: str = "loss/") -> None:
        self.tb.scalars(logs, step, prefix)
        if self.wandb is not None:
            self.wandb.log({prefix + k: v for k, v in logs.items()}, step=step)

    def image(self, tag: str, image: Tensor, step: int) -> None:
        """``image (H, W, 3)`` or ``(H, W)`` in ``[0, 1]``."""
        if self.tb._w is not None:
            self.tb._w.add_image(tag, image, step, dataformats="HWC" if image.ndim == 3
                                 else "HW")
        if self.wandb is not None:
            import wandb

            self.wandb.log({tag: wandb.Image(image.numpy())}, step=step)

    def text(self, tag: str, text: str, step: int) -> None:
        if self.tb._w is not None:
            self.tb._w.add_text(tag, text, step)
        if self.wandb is not None:
            self.wandb.log({tag: text}, step=step)

    def close(self) -> None:
        self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()
            self.wandb = None


def _start_wandb(run_dir: Path, config: dict[str, Any]) -> Any:
    try:
        import wandb
    except ImportError:
        raise ConfigError("train.trackers: wandb is not installed (pip install wandb)") from None

    run_dir.mkdir(parents=True, exist_ok=True)
    run_id = re.sub(r"[^A-Za-z0-9_-]", "_", run_dir.name[:40]) + "-" + hashlib.sha256(
        str(run_dir.resolve()).encode()).hexdigest()[:8]
    # wandb checks the mode itself; its Literal omits the legacy names it accepts ("dryrun")
    return wandb.init(project=os.environ.get("WANDB_PROJECT", "fewstep"), dir=str(run_dir),
                      mode=cast(Any, os.environ.get("WANDB_MODE", "offline")), name=run_dir.name,
                      id=run_id, resume="allow", config=config)


__all__ = ["TRACKERS", "Trackers"]
