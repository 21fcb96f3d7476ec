"""SIGKILL at random points, resume, and compare bit-for-bit with an uninterrupted run."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from rel_helpers import (
    assert_same_tensors,
    max_logged_step,
    start_distill,
    tiny_config,
)

from fewstep.distill.state import list_checkpoints

ITERATIONS = 80
TIMEOUT = 240.0


def _wait_for_progress(proc: subprocess.Popen, run_dir: Path, past: int, log: Path) -> None:
    """Block until the run has logged a step beyond ``past`` (it is inside the loop)."""
    deadline = time.monotonic() + TIMEOUT
    while max_logged_step(run_dir) <= past:
        if proc.poll() is not None:
            pytest.fail(f"training exited early (rc {proc.returncode}):\n{log.read_text()}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"no progress past step {past}:\n{log.read_text()}")
        time.sleep(0.05)


def _finish(proc: subprocess.Popen, log: Path) -> int:
    try:
        return proc.wait(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail(f"training did not finish:\n{log.read_text()}")


@pytest.mark.slow
def test_sigkill_and_sigterm_resume_is_bit_identical(rel_teacher_path: Path,
                                                     rel_cache_dir: Path,
                                                     tmp_path: Path) -> None:
    cfg = tiny_config(rel_teacher_path, rel_cache_dir, iterations=ITERATIONS, ckpt_every=4,
                      lr_warmup=30)
    cfg_file = tmp_path / "distill.yaml"
    cfg_file.write_text(yaml.safe_dump(cfg))
    ref, run = tmp_path / "ref", tmp_path / "run"
    log = tmp_path / "train.log"

    # uninterrupted reference (also builds the shared teacher cache)
    proc = start_distill(["--config", str(cfg_file), "--out", str(ref), "--quiet"], log)
    assert _finish(proc, log) == 0, log.read_text()

    rng = random.Random(20240611)
    args = ["--config", str(cfg_file), "--out", str(run), "--quiet"]
    kills, seen, first = [], 0, True
    while len(kills) < 3:
        proc = start_distill(args if first else [*args, "--resume"], log)
        first = False
        _wait_for_progress(proc, run, seen, log)
        time.sleep(rng.uniform(0.0, 0.6))
        if proc.poll() is not None:
            pytest.fail(f"run finished before kill {len(kills) + 1}; raise ITERATIONS")
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        seen = max_logged_step(run)
        kills.append(seen)
    assert len(kills) == 3 and kills[-1] < ITERATIONS, kills

    # SIGTERM: checkpoint at the next step boundary, exit 143
    proc = start_distill([*args, "--resume"], log)
    _wait_for_progress(proc, run, seen, log)
    proc.send_signal(signal.SIGTERM)
    assert _finish(proc, log) == 143, log.read_text()
    stopped = int(list_checkpoints(run / "checkpoints")[-1].name[5:13])
    assert stopped == max_logged_step(run) < ITERATIONS

    proc = start_distill([*args, "--resume"], log)
    assert _finish(proc, log) == 0, log.read_text()

    # same final EMA student, same full training state, same loss history
    assert_same_tensors(ref / "student.safetensors", run / "student.safetensors")
    last = f"ckpt_{ITERATIONS:08d}.safetensors"
    assert_same_tensors(ref / "checkpoints" / last, run / "checkpoints" / last)
    rows = [json.loads(x) for x in (run / "losses.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, ITERATIONS + 1))
    assert (ref / "losses.jsonl").read_text() == (run / "losses.jsonl").read_text()
    # no temp files of torn checkpoint writes are left behind
    assert not [p for p in (run / "checkpoints").iterdir() if p.name.startswith(".")]
