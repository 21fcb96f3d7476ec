"""Helpers and session fixtures of the command-line tests (``tests/cli``).

Black-box on purpose: nothing here imports ``fewstep``. Every case runs ``python -m fewstep
...`` in a subprocess, as a user would, on files made on disk (with numpy, PIL, safetensors,
diffusers), and judges only what a user sees: the exit code, stderr, the files left behind
(issue 24: "nothing lost, nothing silently wrong"). Each subprocess is bounded (``CLI_TIMEOUT``,
generous for a busy 2-core machine: a bound catches hangs, it measures nothing); a case that
would allocate without bound runs under an address-space limit so that a regression fails the
test instead of taking the machine's memory. Kills, resumes and concurrent commands are marked
``slow``.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

#: seconds one CLI call may take before the case counts as a hang (imports alone take ~10 s
#: on a loaded 2-core machine)
CLI_TIMEOUT = 120.0
#: address-space limit of cases that must be refused before they allocate (bytes)
AS_LIMIT = 10 * 2**30


@dataclass
class Result:
    argv: list[str]
    rc: int | None  # None: timed out (killed)
    stdout: str
    stderr: str
    seconds: float

    @property
    def lines(self) -> list[str]:
        return [ln for ln in self.stderr.splitlines() if ln.strip()]

    def brief(self) -> str:
        head = " | ".join(ln[:200] for ln in self.lines[:3])
        tail = " | ".join(ln[:200] for ln in self.lines[-2:]) if len(self.lines) > 3 else ""
        return (f"rc={self.rc} after {self.seconds:.1f}s, {len(self.lines)} stderr line(s): "
                f"{head}{' ... ' + tail if tail else ''}")


def _env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1",
               COLUMNS="100")
    env.update(extra or {})
    return env


def _limits(as_bytes: int | None, fsize: int | None) -> Callable[[], None]:
    def pre() -> None:
        os.setsid()  # own process group: a timeout kills the whole tree
        if as_bytes is not None:
            resource.setrlimit(resource.RLIMIT_AS, (as_bytes, as_bytes))
        if fsize is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
    return pre


def fewstep(*args: str | os.PathLike[str], timeout: float = CLI_TIMEOUT,
            cwd: Path | None = None, env: dict[str, str] | None = None,
            as_limit: int | None = None, fsize_limit: int | None = None) -> Result:
    """``python -m fewstep ARGS`` in a subprocess; a timeout kills its process group."""
    argv = [sys.executable, "-m", "fewstep", *map(str, args)]
    t0 = time.monotonic()
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         errors="replace", cwd=cwd, env=_env(env),
                         preexec_fn=_limits(as_limit, fsize_limit))
    try:
        out, err = p.communicate(timeout=timeout)
        rc: int | None = p.returncode
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        out, err = p.communicate()
        rc = None
    return Result(argv[3:], rc, out, err, time.monotonic() - t0)


def start(*args: str | os.PathLike[str], log: Path) -> subprocess.Popen:
    """Start ``python -m fewstep ARGS`` in the background (stdout + stderr to ``log``)."""
    f = log.open("ab")
    return subprocess.Popen([sys.executable, "-m", "fewstep", *map(str, args)], stdout=f,
                            stderr=subprocess.STDOUT, env=_env(), preexec_fn=os.setsid)


def stop(p: subprocess.Popen) -> None:
    if p.poll() is None:
        os.killpg(p.pid, signal.SIGKILL)
    p.wait()


def assert_one_line(r: Result, rc: int = 2, *words: str) -> None:
    """The issue's bar: exit ``rc``, exactly one stderr line starting with ``error:`` that
    contains every word in ``words`` (case-insensitive), no traceback, no hang."""
    assert r.rc is not None, f"no exit within {r.seconds:.0f}s (hang): {r.argv[:6]}"
    assert "Traceback" not in r.stderr, f"traceback: {r.brief()}"
    assert r.rc == rc, f"expected exit {rc}: {r.brief()}"
    assert len(r.lines) == 1, f"expected one stderr line: {r.brief()}"
    assert r.lines[0].startswith("error:"), r.brief()
    low = r.lines[0].lower()
    missing = [w for w in words if w.lower() not in low]
    assert not missing, f"message lacks {missing}: {r.lines[0][:400]}"


def ok(r: Result) -> Result:
    assert r.rc == 0, r.brief()
    return r


def tree(folder: Path) -> dict[str, bytes]:
    """Relative path -> content of every file below ``folder``."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


def write_images(folder: Path, n: int, seed: int = 0, mode: str = "L",
                 size: int = 8) -> list[np.ndarray]:
    """``n`` random ``size``x``size`` PNGs; returns the 8-bit arrays written."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        shape = (size, size) if mode == "L" else (size, size, 3)
        v = rng.integers(0, 256, shape, dtype=np.uint8)
        Image.fromarray(v).save(folder / f"{i:03d}.png")
        out.append(v)
    return out


# ------------------------------------------------------------------ session fixtures
@pytest.fixture(scope="session")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("i24")


TEACHER_ARGS = ("network.hidden=64", "network.depth=2", "network.emb=32", "steps=150")


@pytest.fixture(scope="session")
def teacher_a(work: Path) -> Path:
    """A small checkerboard teacher trained through the CLI."""
    out = work / "teacher_a.safetensors"
    ok(fewstep("teacher", "train", "--quiet", "--data", "checkerboard", "--out", out,
               *TEACHER_ARGS, "seed=0", timeout=300))
    return out


@pytest.fixture(scope="session")
def teacher_b(work: Path) -> Path:
    """Another teacher of the same shape (other seed): another model."""
    out = work / "teacher_b.safetensors"
    ok(fewstep("teacher", "train", "--quiet", "--data", "checkerboard", "--out", out,
               *TEACHER_ARGS, "seed=1", timeout=300))
    return out


def distill_args(teacher: Path, cache: Path, **over: object) -> list[str]:
    """Overrides of a tiny Turbo++ checkerboard run (a few seconds of training)."""
    kv = {"data": "checkerboard", "method": "turbo_pp", "teacher.path": str(teacher),
          "train.iterations": 4, "train.batch_size": 16, "train.ckpt_every": 2,
          "train.log_every": 1, "cache.size": 64, "cache.shard_size": 32,
          "cache.dir": str(cache), "eval.num_samples": 10}
    kv.update(over)
    return [f"{k}={v}" for k, v in kv.items()]


@pytest.fixture(scope="session")
def run_a(work: Path, teacher_a: Path) -> Path:
    """A finished tiny distillation of teacher A."""
    out = work / "run_a"
    ok(fewstep("distill", "--quiet", "--out", out, *distill_args(teacher_a, work / "cache"),
               timeout=400))
    return out


@pytest.fixture(scope="session")
def run_b(work: Path, teacher_a: Path) -> Path:
    """Another finished run of the same teacher: other seed, a 3-step student (its export has
    one step folder more than run A's)."""
    out = work / "run_b"
    ok(fewstep("distill", "--quiet", "--out", out,
               *distill_args(teacher_a, work / "cache",
                             **{"train.seed": 7, "student.num_steps": 3}), timeout=400))
    return out


def make_unet_folder(folder: Path, seed: int = 0) -> Path:
    """A tiny diffusers UNet2DModel + DDPMScheduler folder for 1x8x8 digits (no fewstep)."""
    import torch
    from diffusers import DDPMScheduler, UNet2DModel

    torch.manual_seed(seed)
    cfg = {"sample_size": 8, "in_channels": 1, "out_channels": 1, "layers_per_block": 1,
           "block_out_channels": (32, 64), "norm_num_groups": 8,
           "down_block_types": ("DownBlock2D", "AttnDownBlock2D"),
           "up_block_types": ("AttnUpBlock2D", "UpBlock2D"), "attention_head_dim": 8}
    UNet2DModel(**cfg).save_pretrained(folder / "unet", safe_serialization=True)
    DDPMScheduler(num_train_timesteps=1000).save_pretrained(folder / "scheduler")
    return folder


def unet_args(unet: Path, cache: Path, **over: object) -> list[str]:
    kv = {"data": "digits", "teacher.kind": "unet_eps", "teacher.pretrained": str(unet),
          "train.iterations": 2, "train.batch_size": 8, "train.ckpt_every": 2,
          "cache.size": 32, "cache.shard_size": 32, "cache.dir": str(cache),
          "eval.num_samples": 10}
    kv.update(over)
    return [f"{k}={v}" for k, v in kv.items()]


@pytest.fixture(scope="session")
def unet_run(work: Path) -> Path:
    """A finished tiny run of a diffusers (unet_eps) teacher: exported in diffusers format."""
    unet = make_unet_folder(work / "unet_teacher")
    out = work / "unet_run"
    ok(fewstep("distill", "--quiet", "--out", out, *unet_args(unet, work / "cache"),
               timeout=400))
    return out


def json_strict(text: str) -> object:
    """``json.loads`` that refuses NaN / Infinity (which are not JSON)."""
    def bad(c: str) -> object:
        raise ValueError(f"non-JSON constant {c}")
    return json.loads(text, parse_constant=bad)
