"""Rewrite fewstep weight files on disk without importing fewstep (the file format is the
contract: safetensors with ``fewstep_kind``, ``config`` (JSON) and ``sha256`` metadata, the
digest over name, dtype, shape and bytes of every tensor in sorted order)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file


def digest(tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def read(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k).clone() for k in f.keys()}, dict(  # noqa: SIM118
            f.metadata() or {})


def rewrite(src: Path, dst: Path,
            tensors_fn: Callable[[dict[str, torch.Tensor]], None] | None = None,
            config_fn: Callable[[dict[str, Any]], None] | None = None,
            keep_digest: bool = True) -> Path:
    """Copy ``src`` to ``dst`` after mutating its tensors / config in place; the sha256 is
    recomputed (``keep_digest``) or dropped."""
    tensors, meta = read(src)
    if tensors_fn is not None:
        tensors_fn(tensors)
    if config_fn is not None:
        cfg = json.loads(meta.get("config", "{}"))
        config_fn(cfg)
        meta["config"] = json.dumps(cfg, sort_keys=True)
    if keep_digest:
        meta["sha256"] = digest(tensors)
    else:
        meta.pop("sha256", None)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(dst), metadata=meta)
    return dst
