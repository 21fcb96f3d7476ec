"""Drive ``python -m fewstep.distill`` in subprocesses and kill it at observable moments.

Used by the kill-and-resume tests and ``benchmarks/robustness/kill_resume.py``. Nothing here
measures time to decide *when* to kill: every wait is on something the run wrote (a logged step, a
checkpoint, a temp file of a write in progress), with a generous timeout only to fail a hung
run, so the same schedule holds on an idle and on an overloaded machine.

:data:`CHILD` optionally slows down fsync of checkpoint and teacher-cache temp files
(``FEWSTEP_TEST_SLOW_FSYNC`` seconds, a slow disk): a kill that waits for such a temp file to
appear then lands inside the write, deterministically.
"""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from fewstep.distill.engine.state import list_checkpoints

#: the child: one torch thread, optional slow fsync of temp files, then fewstep.distill's main
CHILD = """
import os, sys, time
import torch
torch.set_num_threads(1)
slow = float(os.environ.get("FEWSTEP_TEST_SLOW_FSYNC", "0") or 0)
if slow > 0:
    real_fsync = os.fsync
    def fsync(fd):
        n = fd if isinstance(fd, int) else fd.fileno()
        try:
            name = os.path.basename(os.readlink(f"/proc/self/fd/{n}"))
        except OSError:
            name = ""
        if name.startswith(".") and name.endswith(".tmp"):
            time.sleep(slow)
        real_fsync(fd)
    os.fsync = fsync
from fewstep.distill.__main__ import main
sys.exit(main(sys.argv[1:]))
"""

TEMP_RE = re.compile(r"^\..+\.tmp$")


class RunFailed(AssertionError):
    """The child exited when it should not have, or never reached the awaited state."""


def child_env(slow_fsync: float = 0.0) -> dict[str, str]:
    env = dict(os.environ)
    env.update({"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
                "FEWSTEP_TEST_SLOW_FSYNC": str(slow_fsync)})
    return env


def start_distill(args: list[str], log: Path, slow_fsync: float = 0.0) -> subprocess.Popen:
    """Start ``python -m fewstep.distill ARGS`` (one thread), stdout + stderr appended to
    ``log``."""
    with log.open("ab") as f:
        return subprocess.Popen([sys.executable, "-c", CHILD, *args], stdout=f,
                                stderr=subprocess.STDOUT, env=child_env(slow_fsync))


def logged_steps(run_dir: Path) -> list[int]:
    """Steps of the complete rows of ``losses.jsonl`` in file order (a torn last row is
    skipped)."""
    path = run_dir / "losses.jsonl"
    out = []
    if path.exists():
        for line in path.read_bytes().splitlines(keepends=True):
            if not line.endswith(b"\n"):
                break
            try:
                out.append(int(json.loads(line)["step"]))
            except (ValueError, KeyError, TypeError):
                break
    return out


def max_logged_step(run_dir: Path) -> int:
    """Largest complete step in ``losses.jsonl``; 0 if none."""
    return max(logged_steps(run_dir), default=0)


def temp_files(folder: Path) -> list[Path]:
    """Temp files of atomic writes in progress (or torn by a kill) in ``folder``."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if TEMP_RE.match(p.name))


def wait_for(proc: subprocess.Popen, cond: Callable[[], bool], what: str, log: Path,
             timeout: float = 900.0, poll: float = 0.01) -> None:
    """Poll ``cond`` until it holds; :class:`RunFailed` if ``proc`` exits first or after
    ``timeout`` seconds (a hung run: generous, so a slow machine never trips it)."""
    deadline = time.monotonic() + timeout
    while not cond():
        if proc.poll() is not None:
            raise RunFailed(f"run exited (rc {proc.returncode}) before {what}:\n"
                            f"{log.read_text(errors='replace')[-3000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            raise RunFailed(f"no {what} within {timeout:.0f} s:\n"
                            f"{log.read_text(errors='replace')[-3000:]}")
        time.sleep(poll)


def wait_for_step(proc: subprocess.Popen, run_dir: Path, step: int, log: Path) -> None:
    """Wait (:func:`wait_for`) until ``run_dir/losses.jsonl`` holds step ``step``."""
    wait_for(proc, lambda: max_logged_step(run_dir) >= step, f"step {step}", log)


def wait_for_new_temp_file(proc: subprocess.Popen, folder: Path, stale: set[Path], what: str,
                           log: Path) -> None:
    """Wait until ``folder`` holds a temp file not in ``stale`` (those torn by an earlier kill):
    a write of *this* process in progress."""
    wait_for(proc, lambda: bool(set(temp_files(folder)) - stale), what, log)


def last_checkpoint_step(folder: Path) -> int:
    """Step of the newest complete checkpoint in ``folder``; 0 if none."""
    done = list_checkpoints(folder)
    return int(done[-1].name[5:13]) if done else 0


def random_kill_step(run_dir: Path, rng: random.Random, ckpt_every: int, iterations: int,
                     logged: int | None = None) -> int | None:
    """A step to kill at: uniform over the ``2 * ckpt_every + 1`` steps from the first one past
    both the newest checkpoint and ``logged`` (what the log held before this process started;
    default: what it holds now), capped at ``iterations - 1`` so the run never finishes first;
    ``None`` (no draw from ``rng``) when no such step is left."""
    logged = max_logged_step(run_dir) if logged is None else logged
    lo = max(last_checkpoint_step(run_dir / "checkpoints"), logged) + 1
    if lo > iterations - 1:
        return None
    return rng.randint(lo, min(lo + 2 * ckpt_every, iterations - 1))


def kill(proc: subprocess.Popen) -> None:
    """SIGKILL and reap."""
    proc.kill()
    proc.wait()


def finish(proc: subprocess.Popen, log: Path, timeout: float = 1800.0) -> int:
    """Wait for the exit code (:class:`RunFailed` after ``timeout`` seconds)."""
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill(proc)
        raise RunFailed(f"run did not finish within {timeout:.0f} s:\n"
                        f"{log.read_text(errors='replace')[-3000:]}") from None
