"""Training-state checkpoints: everything needed to continue a run bit-identically.

One safetensors file per checkpoint, ``ckpt_<step:08d>.safetensors``, of kind
``"train_state"``. Tensors are stored under ``<object>/<key>``:

* ``<module>/<key>``: every module's state dict (student, EMA, the recipe's discriminator /
  fake score network);
* ``opt.<name>/state/<param id>/<key>``: optimizer moments and step counts;
* ``rng/torch``, ``rng/cuda<i>``, ``rng/gen/<name>`` (e.g. the data-order generator),
  ``rng/numpy``: RNG states.

Everything that is not a tensor is JSON in the metadata: ``optimizers`` (param groups and
non-tensor state), ``schedulers`` (LR-schedule state dicts), ``rng`` (NumPy / Python RNG),
``counters`` (step, rollbacks, ...) and ``config`` (the resolved run config). Files are written
atomically with a checksum (:mod:`fewstep.utils.files`); a state holding NaN / Inf is never written;
loading never unpickles anything.
"""

from __future__ import annotations

import json
import logging
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from fewstep.errors import CheckpointError, DivergenceError, WriteError
from fewstep.utils.files import load_tensors, read_metadata, save_tensors

log = logging.getLogger(__name__)
CKPT_RE = re.compile(r"^ckpt_(\d{8})\.safetensors$")
#: temp files left by a process killed while writing a checkpoint (see fewstep.utils.files)
TMP_RE = re.compile(r"^\.ckpt_\d{8}\.safetensors\..+\.tmp$")


def _flatten_optimizer(name: str, opt: torch.optim.Optimizer, tensors: dict[str, Tensor]
                       ) -> dict[str, Any]:
    sd = opt.state_dict()
    meta_state: dict[str, dict[str, Any]] = {}
    for pid, st in sd["state"].items():
        for key, val in st.items():
            if torch.is_tensor(val):
                tensors[f"{name}/state/{pid}/{key}"] = val
            else:
                meta_state.setdefault(str(pid), {})[key] = val
    return {"param_groups": sd["param_groups"], "state": meta_state}


def _unflatten_optimizer(name: str, meta: dict[str, Any], tensors: dict[str, Tensor]
                         ) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    prefix = f"{name}/state/"
    for k, v in tensors.items():
        if k.startswith(prefix):
            pid, key = k[len(prefix):].split("/", 1)
            state.setdefault(int(pid), {})[key] = v
    for pid, st in meta["state"].items():
        state.setdefault(int(pid), {}).update(st)
    return {"state": state, "param_groups": meta["param_groups"]}


def rng_state(generators: dict[str, torch.Generator]) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """All RNG states: torch (CPU + CUDA if present), named generators, NumPy, Python."""
    tensors = {"rng/torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng/cuda{i}"] = s
    for k, g in generators.items():
        tensors[f"rng/gen/{k}"] = g.get_state()
    np_state = np.random.get_state(legacy=True)
    if not isinstance(np_state, tuple):  # the legacy MT19937 tuple, unless NumPy changes it
        raise RuntimeError(f"unexpected NumPy RNG state {type(np_state).__name__}")
    tensors["rng/numpy"] = torch.from_numpy(np.asarray(np_state[1], dtype=np.int64))
    meta = {"numpy": [np_state[0], int(np_state[2]), int(np_state[3]), float(np_state[4])],
            "python": _py_state_to_json(random.getstate())}
    return tensors, meta


def _py_state_to_json(s: tuple) -> list:
    return [s[0], list(s[1]), s[2]]


def restore_rng(tensors: dict[str, Tensor], meta: dict[str, Any],
                generators: dict[str, torch.Generator]) -> None:
    torch.set_rng_state(tensors["rng/torch"])
    if torch.cuda.is_available():
        states = [tensors[k] for k in sorted(tensors) if k.startswith("rng/cuda")]
        if states:
            torch.cuda.set_rng_state_all(states)
    for k, g in generators.items():
        g.set_state(tensors[f"rng/gen/{k}"])
    n = meta["numpy"]
    np.random.set_state((n[0], tensors["rng/numpy"].numpy().astype(np.uint32), n[1], n[2], n[3]))
    p = meta["python"]
    random.setstate((p[0], tuple(p[1]), p[2]))


def first_non_finite(tensors: dict[str, Tensor]) -> str | None:
    """Name of the first floating-point tensor holding NaN / Inf (``None`` if all finite)."""
    for k, v in tensors.items():
        if (v.is_floating_point() or v.is_complex()) and not bool(torch.isfinite(v).all()):
            return k
    return None


def save_train_state(path: str | Path, modules: dict[str, nn.Module],
                     optimizers: dict[str, torch.optim.Optimizer],
                     generators: dict[str, torch.Generator], counters: dict[str, Any],
                     config: dict[str, Any],
                     schedulers: dict[str, torch.optim.lr_scheduler.LRScheduler] | None = None
                     ) -> None:
    """Write modules, optimizers, LR schedules, RNG states, counters and config atomically.

    Raises :class:`DivergenceError` (and writes nothing) if any tensor is NaN / Inf, so a
    diverged state can never replace a good checkpoint, and :class:`WriteError` if the operating
    system refuses the write (the earlier checkpoints are untouched).
    """
    tensors: dict[str, Tensor] = {}
    for name, m in modules.items():
        for k, v in m.state_dict().items():
            tensors[f"{name}/{k}"] = v
    opt_meta = {name: _flatten_optimizer(f"opt.{name}", o, tensors)
                for name, o in optimizers.items()}
    bad = first_non_finite(tensors)
    if bad is not None:
        raise DivergenceError(f"refusing to write checkpoint {Path(path).name}: {bad} holds "
                              "NaN or Inf")
    rng_t, rng_m = rng_state(generators)
    tensors.update(rng_t)
    sched_meta = {name: s.state_dict() for name, s in (schedulers or {}).items()}
    extra = {"optimizers": json.dumps(opt_meta), "rng": json.dumps(rng_m),
             "counters": json.dumps(counters), "schedulers": json.dumps(sched_meta)}
    try:
        save_tensors(path, tensors, "train_state", config, extra)
    except WriteError as e:  # (exit code 3) say what the run can continue from
        raise WriteError(f"{e}; the earlier checkpoints in {Path(path).parent} are kept "
                         "(make room, then continue with --resume)") from None


def load_train_state(path: str | Path, modules: dict[str, nn.Module],
                     optimizers: dict[str, torch.optim.Optimizer],
                     generators: dict[str, torch.Generator],
                     schedulers: dict[str, torch.optim.lr_scheduler.LRScheduler] | None = None
                     ) -> dict[str, Any]:
    """Restore everything written by :func:`save_train_state`; returns the counters.

    Module state dicts must match exactly (no missing or unexpected keys).
    """
    tensors, _ = load_tensors(path, kind="train_state")
    meta = read_metadata(path)
    try:
        for name, m in modules.items():
            pre = f"{name}/"
            sd = {k[len(pre):]: v for k, v in tensors.items() if k.startswith(pre)}
            m.load_state_dict(sd)
        opt_meta = json.loads(meta["optimizers"])
        for name, o in optimizers.items():
            o.load_state_dict(_unflatten_optimizer(f"opt.{name}", opt_meta[name], tensors))
        sched_meta = json.loads(meta.get("schedulers", "{}"))
        for name, s in (schedulers or {}).items():
            s.load_state_dict(sched_meta[name])
        restore_rng(tensors, json.loads(meta["rng"]), generators)
        return json.loads(meta["counters"])
    except (KeyError, RuntimeError, ValueError, TypeError) as e:
        raise CheckpointError(f"{path} does not match this run ({type(e).__name__}: {e})"
                              ) from None


def checkpoint_config(path: str | Path) -> dict[str, Any]:
    """The resolved run config stored in a checkpoint."""
    cfg = json.loads(read_metadata(path).get("config", "{}"))
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{path} has no run config")
    return cfg


def list_checkpoints(folder: str | Path) -> list[Path]:
    """Checkpoints in ``folder``, oldest first (regular files only: symlinks are ignored)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir()
                  if CKPT_RE.match(p.name) and p.is_file() and not p.is_symlink())


def latest_good_checkpoint(folder: str | Path, problems: list[str] | None = None
                           ) -> Path | None:
    """The newest checkpoint that passes its checksum; corrupt ones are reported and skipped.

    A one-line reason for every skipped file is logged and, if given, appended to ``problems``.
    """
    for p in reversed(list_checkpoints(folder)):
        try:
            load_tensors(p, kind="train_state")
            return p
        except CheckpointError as e:
            log.warning("skipping checkpoint: %s", e)
            if problems is not None:
                problems.append(str(e))
    return None


def prune_checkpoints(folder: str | Path, keep_last: int) -> None:
    """Delete all but the newest ``keep_last`` checkpoints, and temp files of torn writes.

    Call it only from the process that owns the run (right after its own write completed).
    """
    for p in list_checkpoints(folder)[:-keep_last]:
        p.unlink(missing_ok=True)
    for p in Path(folder).iterdir():
        if TMP_RE.match(p.name) and p.is_file():
            p.unlink(missing_ok=True)
