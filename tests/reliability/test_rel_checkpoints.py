"""Truncated / altered / foreign checkpoints: clear errors and fallback to the previous one."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
from rel_helpers import (
    assert_same_tensors,
    flip_byte,
    one_thread,
    tiny_distill_config,
    truncate,
)

from fewstep.distill.config import DistillConfig
from fewstep.distill.engine.state import latest_good_checkpoint, list_checkpoints
from fewstep.distill.trainer import Trainer
from fewstep.errors import CheckpointError, ConfigError
from fewstep.utils.files import load_tensors, save_tensors


@pytest.fixture(scope="module")
def finished_run(rel_teacher_path: Path, rel_cache_dir: Path,
                 tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, DistillConfig]:
    """A complete 8-step run with checkpoints at steps 4, 6, 8 (keep_last 3)."""
    cfg = tiny_distill_config(rel_teacher_path, rel_cache_dir, iterations=8, ckpt_every=2,
                              lr_warmup=4)
    run = tmp_path_factory.mktemp("finished") / "run"
    with one_thread():
        Trainer(cfg, run, progress=False).train()
    return run, cfg


@pytest.fixture
def run_copy(finished_run: tuple[Path, DistillConfig], tmp_path: Path
             ) -> tuple[Path, DistillConfig, Path]:
    """A private copy of the finished run, plus a pristine copy of its final checkpoint."""
    src, cfg = finished_run
    run = tmp_path / "run"
    shutil.copytree(src, run)
    pristine = tmp_path / "pristine.safetensors"
    shutil.copy(run / "checkpoints" / "ckpt_00000008.safetensors", pristine)
    return run, cfg, pristine


def _ckpt(run: Path, step: int) -> Path:
    return run / "checkpoints" / f"ckpt_{step:08d}.safetensors"


def test_checkpoints_kept_and_complete(run_copy: tuple[Path, DistillConfig, Path]) -> None:
    run, _, _ = run_copy
    assert [p.name for p in list_checkpoints(run / "checkpoints")] == [
        "ckpt_00000004.safetensors", "ckpt_00000006.safetensors", "ckpt_00000008.safetensors"]
    t, cfg = load_tensors(_ckpt(run, 8), kind="train_state")
    prefixes = {k.split("/")[0] for k in t}
    assert {"student", "ema", "method", "opt.g", "opt.aux", "rng"} <= prefixes
    assert "rng/gen/data" in t and "rng/numpy" in t and "rng/torch" in t
    assert cfg["train"]["iterations"] == 8
    from fewstep.utils.files import read_metadata

    meta = read_metadata(_ckpt(run, 8))
    assert json.loads(meta["counters"])["step"] == 8
    sched = json.loads(meta["schedulers"])
    assert set(sched) == {"g", "aux"} and sched["g"]["last_epoch"] == 8


def test_truncated_checkpoint_is_detected_and_resume_falls_back(
        run_copy: tuple[Path, DistillConfig, Path], caplog: pytest.LogCaptureFixture) -> None:
    run, cfg, pristine = run_copy
    truncate(_ckpt(run, 8), 0.6)
    with pytest.raises(CheckpointError, match=r"ckpt_00000008.*(truncated|not a readable)"):
        load_tensors(_ckpt(run, 8), kind="train_state")
    # resume: skips step 8, continues from step 6 and re-creates step 8 bit-identically
    caplog.set_level(logging.WARNING)
    tr = Trainer(cfg, run, progress=False, resume=True)
    tr.train()
    assert "skipping checkpoint" in caplog.text and "ckpt_00000008" in caplog.text
    assert tr.step == 8
    assert_same_tensors(pristine, _ckpt(run, 8))


def test_bit_flip_in_tensor_data_fails_the_checksum(
        run_copy: tuple[Path, DistillConfig, Path]) -> None:
    run, cfg, _ = run_copy
    flip_byte(_ckpt(run, 8), 100)
    with pytest.raises(CheckpointError, match=r"ckpt_00000008.*failed its checksum"):
        load_tensors(_ckpt(run, 8))
    problems: list[str] = []
    assert latest_good_checkpoint(run / "checkpoints", problems) == _ckpt(run, 6)
    assert len(problems) == 1 and "checksum" in problems[0]
    tr = Trainer(cfg, run, progress=False, resume=True)
    tr.batches.prepare(False)
    assert tr.try_resume() and tr.step == 6
    # the history is cut back to the checkpoint's step
    rows = [json.loads(x) for x in (run / "losses.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]


def test_bit_flip_in_header_is_detected(run_copy: tuple[Path, DistillConfig, Path]) -> None:
    run, _, _ = run_copy
    data = bytearray(_ckpt(run, 8).read_bytes())
    data[12] ^= 0x55  # inside the JSON header
    _ckpt(run, 8).write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="ckpt_00000008"):
        load_tensors(_ckpt(run, 8))
    assert latest_good_checkpoint(run / "checkpoints") == _ckpt(run, 6)


def test_foreign_file_under_a_checkpoint_name_is_skipped(
        run_copy: tuple[Path, DistillConfig, Path]) -> None:
    run, _, _ = run_copy
    shutil.copy(run / "student.safetensors", _ckpt(run, 99))
    problems: list[str] = []
    assert latest_good_checkpoint(run / "checkpoints", problems) == _ckpt(run, 8)
    assert "holds 'student', expected 'train_state'" in problems[0]


def test_all_checkpoints_corrupt_is_a_clear_error(
        run_copy: tuple[Path, DistillConfig, Path]) -> None:
    run, cfg, _ = run_copy
    for p in list_checkpoints(run / "checkpoints"):
        truncate(p, 0.3)
    tr = Trainer(cfg, run, progress=False, resume=True)
    with pytest.raises(CheckpointError, match="no usable checkpoint") as e:
        tr.train()
    assert "\n" not in str(e.value)


def test_torn_history_line_is_dropped_on_resume(
        run_copy: tuple[Path, DistillConfig, Path]) -> None:
    run, cfg, _ = run_copy
    _ckpt(run, 8).unlink()
    with (run / "losses.jsonl").open("a") as f:
        f.write('{"step": 9, "g_tot')  # a process killed mid-write
    tr = Trainer(cfg, run, progress=False, resume=True)
    tr.batches.prepare(False)
    assert tr.try_resume() and tr.step == 6
    assert [r["step"] for r in tr.losses.history] == [1, 2, 3, 4, 5, 6]
    assert (run / "losses.jsonl").read_text().endswith("\n")


def test_resume_refuses_a_changed_config_but_allows_more_iterations(
        run_copy: tuple[Path, DistillConfig, Path]) -> None:
    run, cfg, _ = run_copy
    changed = cfg.model_copy(update={"train": cfg.train.model_copy(update={"lr": 1e-3})})
    tr = Trainer(changed, run, progress=False, resume=True)
    tr.batches.prepare(False)
    with pytest.raises(ConfigError, match=r"^train\.lr: .*trained with 0\.0001"):
        tr.try_resume()
    longer = cfg.model_copy(update={"train": cfg.train.model_copy(update={"iterations": 10})})
    tr = Trainer(longer, run, progress=False, resume=True)
    tr.batches.prepare(False)
    assert tr.try_resume() and tr.step == 8


def test_resume_refuses_another_teacher(run_copy: tuple[Path, DistillConfig, Path],
                                        rel_teacher_path: Path, tmp_path: Path) -> None:
    run, cfg, _ = run_copy
    tensors, tcfg = load_tensors(rel_teacher_path, kind="denoiser")
    other = tmp_path / "other_teacher.safetensors"
    save_tensors(other, {k: v * 1.01 for k, v in tensors.items()}, "denoiser", tcfg)
    cfg2 = cfg.model_copy(update={"teacher": cfg.teacher.model_copy(
        update={"path": str(other)})})
    tr = Trainer(cfg2, run, progress=False, resume=True)
    with pytest.raises(CheckpointError, match="another teacher"):
        tr.try_resume()
