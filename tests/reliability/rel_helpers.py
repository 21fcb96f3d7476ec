"""Helpers for the reliability tests: tiny distillation configs and CLI / subprocess runners."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from fewstep.distill.config import DistillConfig
from fewstep.utils.files import load_tensors

#: run ``python -m fewstep.distill`` with one torch thread (the machine's cores are shared)
SUBPROCESS_MAIN = ("import sys, torch; torch.set_num_threads(1); "
                   "from fewstep.distill.__main__ import main; sys.exit(main(sys.argv[1:]))")


@contextmanager
def one_thread() -> Iterator[None]:
    """Run torch on one thread inside the block (restores the previous count)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def tiny_config(teacher: Path, cache_dir: Path, **train: Any) -> dict[str, Any]:
    """A Turbo++ config on the checkerboard that trains in a few seconds."""
    t = {"iterations": 8, "batch_size": 32, "ckpt_every": 2, "log_every": 1, "keep_last": 3}
    t.update(train)
    return {"data": "checkerboard", "method": "turbo_pp", "teacher": {"path": str(teacher)},
            "cache": {"dir": str(cache_dir), "size": 256, "shard_size": 128},
            "train": t, "eval": {"num_samples": 10}}


def tiny_distill_config(teacher: Path, cache_dir: Path, **train: Any) -> DistillConfig:
    return DistillConfig.model_validate(tiny_config(teacher, cache_dir, **train))


def subprocess_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update({"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"})
    return env


def tensors(path: Path) -> dict[str, torch.Tensor]:
    return load_tensors(path)[0]


def assert_same_tensors(a: Path, b: Path) -> None:
    ta, tb = tensors(a), tensors(b)
    assert sorted(ta) == sorted(tb)
    diff = [k for k in ta if not torch.equal(ta[k], tb[k])]
    assert not diff, f"{len(diff)} tensors differ between {a} and {b}, e.g. {diff[:5]}"


def flip_byte(path: Path, offset_from_end: int) -> None:
    """Invert one byte counted from the end of the file (inside the tensor data)."""
    data = bytearray(path.read_bytes())
    data[-offset_from_end] ^= 0xFF
    path.write_bytes(bytes(data))


def truncate(path: Path, keep_fraction: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep_fraction)])
