"""What a run writes while it trains besides checkpoints: ``losses.jsonl`` (one row per
generator update), tensorboard scalars (``tb/``) and sample grids (``samples/*.png``).

``losses.jsonl`` always matches the training state: on resume it is cut back to the
checkpoint's step, on a fresh start (including a resume that finds no checkpoint yet) it is
emptied, and after a rollback it is cut back to the checkpoint rolled back to.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import torch
from torch.utils.tensorboard import SummaryWriter

from fewstep.data.problem import Problem
from fewstep.student.student import Student
from fewstep.utils.viz import save_grid

#: one row of ``losses.jsonl``: ``step`` and the named values (``None``: a non-finite value)
LogRow = dict[str, float | None]


class LossLog:
    """``losses.jsonl`` of rank 0 (other ranks write nothing); keeps the rows in memory."""

    def __init__(self, path: Path, enabled: bool = True) -> None:
        self.path = path
        self.enabled = enabled
        self.history: list[LogRow] = []
        self._f: Any = None

    def cut(self, step: int) -> list[LogRow]:
        """Keep the rows up to ``step`` (0: none), in the file and in memory."""
        self.history = read_history(self.path, step) if self.enabled else []
        return self.history

    def open(self) -> None:
        self._f = self.path.open("a") if self.enabled else None

    def append(self, step: int, logs: dict[str, float]) -> dict[str, Any]:
        """Log one row. A non-finite value that is allowed (an fp16 step skipped for an
        overflowing gradient) is written as ``null``: every line is strict JSON."""
        rec = {"step": step, **{k: round(v, 6) if math.isfinite(v) else None
                                for k, v in logs.items()}}
        self.history.append(rec)
        if self._f is not None:
            self._f.write(json.dumps(rec, allow_nan=False) + "\n")
        return rec

    def flush(self) -> None:
        if self._f is not None:
            self._f.flush()

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None


def read_history(path: Path, upto: int) -> list[LogRow]:
    """Rows of ``losses.jsonl`` up to step ``upto``; the file is truncated after them.

    Rows are appended in step order, so the kept rows are a prefix: reading stops at the first
    row past ``upto`` or the first torn line (a process killed mid-write). Truncating in place
    (one syscall) keeps an open append handle valid, which a rollback relies on.
    """
    if not path.exists():
        return []
    rows: list[LogRow] = []
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


class ScalarWriter:
    """Tensorboard scalars under ``<run>/tb`` (rank 0), a no-op elsewhere."""

    def __init__(self, folder: Path, enabled: bool, purge_step: int | None) -> None:
        self._w = SummaryWriter(str(folder), purge_step=purge_step) if enabled else None

    def scalars(self, logs: dict[str, float], step: int, prefix: str = "loss/") -> None:
        if self._w is not None:
            for k, v in logs.items():
                self._w.add_scalar(prefix + k, v, step)

    def close(self) -> None:
        if self._w is not None:
            self._w.close()


@torch.no_grad()
def write_samples(path: Path | None, student: Student, problem: Problem, seed: int,
                  device: torch.device, title: str, n: int = 100) -> None:
    """A grid of the student's samples from fixed noise (``seed``) to ``path`` (``None``: run
    the student but write nothing -- FSDP ranks other than 0 must take part).

    Toy problems: 1000 points; images: ``n`` (16 when decoded through a VAE); class labels /
    prompts cycle through the classes."""
    g = torch.Generator().manual_seed(seed)
    n = 1000 if problem.is_toy else n
    decode = getattr(problem, "decode", None)  # latents -> RGB images (VAE)
    n_prompts = getattr(problem, "num_prompts", 0)
    if decode is not None:
        n = min(n, 16)
    noise = torch.randn((n, *problem.data_shape), generator=g).to(device)
    cond = None if problem.num_classes == 0 else \
        (torch.arange(n) % problem.num_classes).to(device)
    if n_prompts:
        cond = problem.cond_map((torch.arange(n) % n_prompts).to(device))
    x = student.generate(noise, cond, generator=g).sample
    if decode is not None:
        x = decode(x)
        n = x.shape[0]
    if path is not None:
        save_grid(path, x, nrow=min(10, n), title=title)
