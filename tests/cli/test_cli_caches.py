"""Caches that know what they hold (issue 24, "What to build" 2).

The observable contract: a run that shares its ``cache.dir`` with earlier runs trains exactly
the student a run with a fresh, empty ``cache.dir`` trains -- whatever happened to the teacher
files in place, or to the cache files while it ran -- or stops with one line. No test looks
inside the cache layout except to damage its files.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import filefmt
import pytest
import torch
from cli_helpers import (
    distill_args,
    fewstep,
    make_unet_folder,
    ok,
    start,
    stop,
    unet_args,
)
from safetensors.torch import load_file, save_file


def differing(a: Path, b: Path) -> list[str]:
    ta, tb = load_file(str(a)), load_file(str(b))
    assert sorted(ta) == sorted(tb)
    return [k for k in ta if not torch.equal(ta[k], tb[k])]


def test_teacher_file_replaced_in_place_is_not_served_from_cache(
        tmp_path: Path, teacher_a: Path, teacher_b: Path) -> None:
    """A teacher file without the optional sha256 metadata (written by another tool):
    today the cache key falls back to the *path*, so the replaced teacher gets the old
    teacher's samples (rc 0, a student of the wrong teacher)."""
    t1 = filefmt.rewrite(teacher_a, tmp_path / "t1.safetensors", keep_digest=False)
    t2 = filefmt.rewrite(teacher_b, tmp_path / "t2.safetensors", keep_digest=False)
    path, shared = tmp_path / "teacher.safetensors", tmp_path / "shared_cache"
    shutil.copy2(t1, path)
    ok(fewstep("distill", "--quiet", "--out", tmp_path / "r1",
               *distill_args(path, shared), timeout=300))
    shutil.copy2(t2, path)  # same path, other weights
    ok(fewstep("distill", "--quiet", "--out", tmp_path / "r2",
               *distill_args(path, shared), timeout=300))
    ok(fewstep("distill", "--quiet", "--out", tmp_path / "r3",
               *distill_args(path, tmp_path / "fresh_cache"), timeout=300))
    diff = differing(tmp_path / "r2" / "student.safetensors",
                     tmp_path / "r3" / "student.safetensors")
    assert not diff, f"{len(diff)} student tensors differ: the old teacher's cache was used"


@pytest.mark.slow
def test_diffusers_teacher_changed_in_the_middle_is_not_served_from_cache(
        tmp_path: Path) -> None:
    """The identity of a diffusers teacher probes only the first 1024 values of its first and
    last 4 parameters: a teacher that differs in a middle block keeps its identity."""
    unet = make_unet_folder(tmp_path / "unet")
    shared = tmp_path / "shared_cache"
    ok(fewstep("distill", "--quiet", "--out", tmp_path / "r1", *unet_args(unet, shared),
               timeout=400))
    f = unet / "unet" / "diffusion_pytorch_model.safetensors"
    sd = load_file(str(f))
    names = sorted(sd)
    mid = next(n for n in names if "mid_block" in n and n.endswith("weight"))
    sd[mid] = sd[mid] * 3.0
    save_file(sd, str(f), metadata={"format": "pt"})
    ok(fewstep("distill", "--quiet", "--out", tmp_path / "r2", *unet_args(unet, shared),
               timeout=400))
    ok(fewstep("distill", "--quiet", "--out", tmp_path / "r3",
               *unet_args(unet, tmp_path / "fresh_cache"), timeout=400))
    diff = differing(tmp_path / "r2" / "student.safetensors",
                     tmp_path / "r3" / "student.safetensors")
    assert not diff, f"{len(diff)} student tensors differ: the old teacher's cache was used"


@pytest.mark.slow
def test_cache_truncated_while_a_run_reads_it(tmp_path: Path, teacher_a: Path) -> None:
    """Cache files truncated in place after the run verified them: today the run reads zeros
    through its memory map and exits 0 with a different student (68 of 68 tensors)."""
    args = distill_args(teacher_a, tmp_path / "cache_ref", **{"train.iterations": 40})
    ok(fewstep("distill", "--quiet", "--out", tmp_path / "ref", *args, timeout=600))
    cache = tmp_path / "cache_run"
    run = tmp_path / "run"
    log = tmp_path / "run.log"
    p = start("distill", "--quiet", "--out", run,
              *distill_args(teacher_a, cache, **{"train.iterations": 40}), log=log)
    try:
        deadline = time.monotonic() + 600
        while not (run / "losses.jsonl").is_file() or \
                len((run / "losses.jsonl").read_text().splitlines()) < 3:
            assert p.poll() is None, log.read_text()[-2000:]
            assert time.monotonic() < deadline, "no step logged"
            time.sleep(0.05)
        for f in cache.rglob("*.safetensors"):
            data = f.read_bytes()
            with open(f, "r+b") as fh:  # in place (same inode): what a mapping sees
                fh.truncate(len(data) // 2)
        rc = p.wait(timeout=600)
    finally:
        stop(p)
    if rc == 0:
        diff = differing(tmp_path / "ref" / "student.safetensors",
                         run / "student.safetensors")
        assert not diff, f"rc 0 but {len(diff)} student tensors differ (damaged cache used)"
    else:
        lines = [ln for ln in log.read_text().splitlines() if ln.strip()]
        assert "Traceback" not in log.read_text() and lines[-1].startswith("error:"), lines[-3:]
