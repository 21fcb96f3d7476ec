"""SIGKILL at seeded random moments, resume, and compare bit-for-bit with an uninterrupted run.

Every kill waits on what the run wrote -- a logged step, a checkpoint temp file -- never on
wall-clock time, and the timeouts only catch a hung run (minutes), so the test holds on an
overloaded machine as on an idle one. Kills cover: before the first checkpoint, inside a
checkpoint write (fsync slowed down so the temp file is observable), and at random steps.
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
from pathlib import Path

import pytest
import yaml
from rel_helpers import assert_same_tensors, tiny_config

from fewstep.distill.engine.state import list_checkpoints
from fewstep.testing.runs import (
    finish,
    kill,
    last_checkpoint_step,
    logged_steps,
    max_logged_step,
    random_kill_step,
    start_distill,
    temp_files,
    wait_for,
    wait_for_new_temp_file,
    wait_for_step,
)

ITERATIONS = 40
CKPT_EVERY = 8
SLOW_FSYNC = 0.3


@pytest.mark.slow
def test_sigkill_and_sigterm_resume_is_bit_identical(rel_teacher_path: Path,
                                                     rel_cache_dir: Path,
                                                     tmp_path: Path) -> None:
    cfg = tiny_config(rel_teacher_path, rel_cache_dir, iterations=ITERATIONS,
                      ckpt_every=CKPT_EVERY, lr_warmup=15)
    cfg_file = tmp_path / "distill.yaml"
    cfg_file.write_text(yaml.safe_dump(cfg))
    ref, run = tmp_path / "ref", tmp_path / "run"
    log = tmp_path / "train.log"

    # uninterrupted reference (also builds the shared teacher cache)
    proc = start_distill(["--config", str(cfg_file), "--out", str(ref), "--quiet"], log)
    assert finish(proc, log) == 0, log.read_text()

    rng = random.Random(20240611)
    args = ["--config", str(cfg_file), "--out", str(run), "--quiet"]
    ckpts = run / "checkpoints"

    def start(resume: bool = True) -> subprocess.Popen:
        return start_distill([*args, "--resume"] if resume else args, log, SLOW_FSYNC)

    # 1. twice before the first checkpoint: the resumed run starts clean, the log too
    # (increasing targets: a kill waits for *this* process to log past the previous one's log)
    for i, target in enumerate(sorted(rng.sample(range(1, CKPT_EVERY), 2))):
        proc = start(resume=i > 0)
        wait_for_step(proc, run, target, log)
        kill(proc)
        assert not list_checkpoints(ckpts)
    # 2. inside a checkpoint write: the torn temp file is ignored, the previous one used
    stale = set(temp_files(ckpts))
    proc = start()
    wait_for_new_temp_file(proc, ckpts, stale, "a checkpoint write", log)
    kill(proc)
    # 3. SIGTERM (early, with many steps left): checkpoint at the next step boundary, exit 143
    # (past what the log holds now: then this process is in its loop, its handlers installed)
    proc = start()
    seen = max_logged_step(run)
    wait_for(proc, lambda: max_logged_step(run) > seen, f"a step past {seen}", log)
    proc.send_signal(signal.SIGTERM)
    assert finish(proc, log) == 143, log.read_text()
    stopped = last_checkpoint_step(ckpts)
    assert stopped == max_logged_step(run) < ITERATIONS
    # 4. at random steps past the last checkpoint
    for _ in range(2):
        target = random_kill_step(run, rng, CKPT_EVERY, ITERATIONS)  # past the log left so far
        if target is None:
            break
        proc = start()
        wait_for_step(proc, run, target, log)
        kill(proc)

    proc = start()
    assert finish(proc, log) == 0, log.read_text()

    # same final EMA student, same full training state, same loss history
    assert_same_tensors(ref / "student.safetensors", run / "student.safetensors")
    last = f"ckpt_{ITERATIONS:08d}.safetensors"
    assert_same_tensors(ref / "checkpoints" / last, ckpts / last)
    assert logged_steps(run) == list(range(1, ITERATIONS + 1))
    rows = [json.loads(x) for x in (run / "losses.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, ITERATIONS + 1))
    assert (ref / "losses.jsonl").read_text() == (run / "losses.jsonl").read_text()
    assert not temp_files(ckpts)  # no temp files of torn checkpoint writes are left behind
