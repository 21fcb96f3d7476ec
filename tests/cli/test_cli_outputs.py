"""Outputs never destroy what they did not write (issue 24, "What to build" 1).

* a non-empty ``--out`` that is not a previous output of the same command is refused (exit 2)
  and left byte-identical;
* re-exporting over a previous export of the same command works and gives exactly what a
  fresh export gives (no stale files of the old one);
* a fresh ``distill`` never replaces a finished run's outputs (even with its checkpoints gone);
* an export folder is read only when complete: a mix of two exports or a torn file is refused
  with one line; a refused write (no space, file too large) is exit 3, one line, and keeps the
  previous export intact.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path

import pytest
from cli_helpers import assert_one_line, distill_args, fewstep, ok, tree


def _user_folder(path: Path) -> dict[str, bytes]:
    (path / "sub").mkdir(parents=True)
    (path / "notes.txt").write_text("my notes\n")
    (path / "sub" / "weights.bin").write_bytes(b"\x01" * 1000)
    return tree(path)


# ------------------------------------------------------------------ foreign folders
def test_diffusers_export_keeps_a_users_folder(tmp_path: Path, unet_run: Path) -> None:
    # today: rc 0 and notes.txt, sub/weights.bin are deleted (the folder is swapped out)
    out = tmp_path / "mine"
    before = _user_folder(out)
    r = fewstep("export", "--run", unet_run, "--out", out)
    assert tree(out) == before, "files in --out were changed or deleted"
    assert_one_line(r, 2, "--out", "--overwrite")


def test_export_into_the_runs_folder_keeps_the_runs(tmp_path: Path, unet_run: Path,
                                                    run_a: Path) -> None:
    # today: rc 0, the exported run and its sibling run are deleted
    runs = tmp_path / "runs"
    shutil.copytree(unet_run, runs / "unet_run")
    shutil.copytree(run_a, runs / "sibling")
    before = tree(runs)
    r = fewstep("export", "--run", runs / "unet_run", "--out", runs)
    assert tree(runs) == before
    assert_one_line(r, 2, "--out")


def test_file_export_keeps_a_users_folder(tmp_path: Path, run_a: Path) -> None:
    # today: rc 0, step0/ step1/ student_index.json are written among the user's files
    out = tmp_path / "mine"
    before = _user_folder(out)
    r = fewstep("export", "--run", run_a, "--out", out)
    assert tree(out) == before
    assert_one_line(r, 2, "--out")


def test_sample_keeps_a_users_folder(tmp_path: Path) -> None:
    out = tmp_path / "mine"
    before = _user_folder(out)
    r = fewstep("sample", "--data", "checkerboard", "--num", "10", "--out", out)
    assert tree(out) == before
    assert_one_line(r, 2, "--out")


def test_overwrite_is_explicit(tmp_path: Path, run_a: Path) -> None:
    out = tmp_path / "mine"
    _user_folder(out)
    ok(fewstep("export", "--run", run_a, "--out", out, "--overwrite"))
    assert (out / "student_index.json").is_file() or (out / "fewstep_student.json").is_file()


@pytest.mark.parametrize("which", ["file", "diffusers"])
def test_reexport_equals_a_fresh_export(tmp_path: Path, run_a: Path, run_b: Path,
                                        unet_run: Path, which: str) -> None:
    """A previous export of the same command may be replaced without --overwrite; the result
    is exactly a fresh export (no stale step folders of the old one)."""
    first, second = (run_b, run_a) if which == "file" else (unet_run, unet_run)
    ok(fewstep("export", "--run", first, "--out", tmp_path / "x"))
    ok(fewstep("export", "--run", second, "--out", tmp_path / "x"))
    ok(fewstep("export", "--run", second, "--out", tmp_path / "fresh"))
    a, b = tree(tmp_path / "x"), tree(tmp_path / "fresh")
    assert sorted(a) == sorted(b)
    weights = [k for k in a if k.endswith(".safetensors")]
    assert all(a[k] == b[k] for k in weights)


# ------------------------------------------------------------------ runs
def test_fresh_distill_keeps_a_finished_run(tmp_path: Path, run_a: Path,
                                            teacher_a: Path) -> None:
    # today: with checkpoints/ gone (pruned or deleted), rc 0 and student.safetensors,
    # losses.jsonl are silently replaced by the new run's
    run = tmp_path / "run"
    shutil.copytree(run_a, run)
    shutil.rmtree(run / "checkpoints")
    keep = {k: hashlib.sha256(v).hexdigest() for k, v in tree(run).items()
            if k in ("student.safetensors", "losses.jsonl", "config.yaml")}
    r = fewstep("distill", "--quiet", "--out", run,
                *distill_args(teacher_a, tmp_path / "cache", **{"train.seed": 3}), timeout=300)
    now = {k: hashlib.sha256(v).hexdigest() for k, v in tree(run).items() if k in keep}
    assert now == keep, "a finished run's outputs were replaced"
    # no checkpoint is left to resume from: the line offers --overwrite or another --out
    assert_one_line(r, 2, "--out", "--overwrite")
    r = fewstep("distill", "--quiet", "--out", run, "--resume",
                *distill_args(teacher_a, tmp_path / "cache", **{"train.seed": 3}), timeout=300)
    assert_one_line(r, 2, "--out", "no checkpoint")


def test_fresh_distill_over_a_run_with_checkpoints_asks_for_resume(
        tmp_path: Path, run_a: Path, teacher_a: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(run_a, run)
    before = tree(run)
    r = fewstep("distill", "--quiet", "--out", run,
                *distill_args(teacher_a, tmp_path / "cache"), timeout=300)
    assert_one_line(r, 2, "--out", "--resume", "--overwrite")
    assert {k: v for k, v in tree(run).items() if k != ".lock"} == \
        {k: v for k, v in before.items() if k != ".lock"}


def test_distill_into_a_users_folder(tmp_path: Path, teacher_a: Path) -> None:
    out = tmp_path / "mine"
    before = _user_folder(out)
    r = fewstep("distill", "--quiet", "--out", out, *distill_args(teacher_a, tmp_path / "c"),
                timeout=300)
    assert {k: v for k, v in tree(out).items() if k in before} == before
    assert_one_line(r, 2, "--out")


# ------------------------------------------------------------------ complete or refused
@pytest.fixture()
def two_exports(tmp_path: Path, run_a: Path, run_b: Path) -> tuple[Path, Path]:
    ok(fewstep("export", "--run", run_a, "--out", tmp_path / "exp_a"))
    ok(fewstep("export", "--run", run_b, "--out", tmp_path / "exp_b"))
    return tmp_path / "exp_a", tmp_path / "exp_b"


def test_mixed_export_is_refused(tmp_path: Path, two_exports: tuple[Path, Path]) -> None:
    # the state a kill leaves between two file commits of an in-place export of B over A:
    # step0 of B, step1 and the index of A (each file complete). today: sample exits 0
    a, b = two_exports
    mixed = tmp_path / "mixed"
    shutil.copytree(a, mixed)
    shutil.copy2(b / "step0" / "model.safetensors", mixed / "step0" / "model.safetensors")
    r = fewstep("sample", "--student", mixed, "--num", "4", "--out", tmp_path / "s")
    assert_one_line(r, 2, "--student")


def test_torn_step_file_is_one_line(tmp_path: Path, two_exports: tuple[Path, Path]) -> None:
    # today: SafetensorError traceback
    a, _ = two_exports
    torn = tmp_path / "torn"
    shutil.copytree(a, torn)
    f = torn / "step1" / "model.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    r = fewstep("sample", "--student", torn, "--num", "4", "--out", tmp_path / "s")
    assert_one_line(r, 2, "--student", "step1")


def test_refused_write_keeps_the_previous_export(tmp_path: Path, run_a: Path,
                                                 run_b: Path) -> None:
    # a file-size limit makes the weights write fail (EFBIG, like ENOSPC): today a
    # SafetensorError traceback (rc 1). Wanted: exit 3, one line, previous export intact.
    out = tmp_path / "x"
    ok(fewstep("export", "--run", run_a, "--out", out))
    before = tree(out)
    biggest = max(p.stat().st_size for p in out.rglob("*.safetensors"))
    r = fewstep("export", "--run", run_b, "--out", out, fsize_limit=biggest // 2)
    assert tree(out) == before
    assert_one_line(r, 3, str(out))


def _tmpfs(path: Path, size: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                         capture_output=True)
    return res.returncode == 0


def test_disk_full_during_export(tmp_path: Path, run_a: Path) -> None:
    # today: SafetensorError "No space left on device" traceback, an empty folder left
    mnt = tmp_path / "small"
    need = (run_a / "student.safetensors").stat().st_size  # about one export's weights
    if not _tmpfs(mnt, f"{max(64, need // 2048)}k"):  # room for half of it
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        r = fewstep("export", "--run", run_a, "--out", mnt / "x")
        assert_one_line(r, 3, "No space left")
        assert not (mnt / "x").exists() or not any((mnt / "x").iterdir())
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)
