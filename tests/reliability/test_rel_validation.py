"""Malformed configs and inputs: exit code 2, one line on stderr naming the field, no traceback.

Cases go through the real entry points: ``python -m fewstep.distill`` (its ``main``, in-process
for speed, plus one real subprocess) and ``fewstep teacher train`` (typer's CliRunner).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from rel_helpers import SUBPROCESS_MAIN, subprocess_env
from typer.testing import CliRunner

from fewstep.app.cli import app
from fewstep.distill.__main__ import main as distill_main
from fewstep.distill.config import DistillConfig
from fewstep.errors import ConfigError
from fewstep.teachers.training import denoiser_from_config, save_denoiser
from fewstep.utils.config_files import validate
from fewstep.utils.files import save_tensors

# (case id, extra overrides, text the one-line error must contain)
DISTILL_CASES: list[tuple[str, list[str], str]] = [
    ("unknown-top-key", ["foo=1"], "foo: unknown key"),
    ("unknown-nested-key", ["train.lrr=0.1"], "train.lrr: unknown key"),
    ("wrong-type", ["train.iterations=many"], "train.iterations:"),
    ("k-below-1", ["student.num_steps=0"], "student.num_steps: Input should be greater than "
                                           "or equal to 1"),
    ("k-too-large", ["student.num_steps=1000"], "student.num_steps:"),
    ("gan-sigma-above-1", ["gan.sigma_min=1.5"], "gan.sigma_min: Input should be less than 1"),
    ("gan-sigma-zero", ["gan.sigma_max=0"], "gan.sigma_max: Input should be greater than 0"),
    ("gan-sigma-order", ["gan.sigma_min=0.7", "gan.sigma_max=0.2"], "gan.sigma_min (0.7) >"),
    ("dm-sigma-order", ["dm.weight=1", "dm.sigma_min=0.9", "dm.sigma_max=0.5"],
     "dm.sigma_min (0.9) >"),
    ("student-sigmas-range", ["student.sigmas=[1.0,1.5]"], "student.sigmas:"),
    ("student-sigmas-start", ["student.num_steps=1", "student.sigmas=[0.5]"],
     "student.sigmas: must start at 1.0"),
    ("student-sigmas-len", ["student.sigmas=[1.0,0.5,0.2]"], "student.sigmas has 3 entries"),
    ("negative-gan-weight", ["gan.weight=-1"], "gan.weight: Input should be greater than or "
                                               "equal to 0"),
    ("negative-dm-weight", ["dm.weight=-0.5"], "dm.weight:"),
    ("negative-step1-weight", ["step1.weight=-2"], "step1.weight:"),
    ("negative-regression-weight", ["turbo.regression_weight=-1"], "turbo.regression_weight:"),
    ("unknown-method", ["method=magic"], "method: Input should be"),
    ("unknown-data", ["data=mnist"], "data: unknown data set; choose from"),
    ("bad-literal", ["step1.loss=l2"], "step1.loss: Input should be"),
    ("lr-zero", ["train.lr=0"], "train.lr: Input should be greater than 0"),
    ("lr-inf", ["train.lr=.inf"], "train.lr: Input should be a finite number"),
    ("betas", ["train.betas=[0.9,1.5]"], "train.betas: each beta must lie in"),
    ("ema-decay", ["train.ema_decay=1.0"], "train.ema_decay: Input should be less than 1"),
    ("device-name", ["train.device=gpu"], "train.device: must be cpu, cuda"),
    ("device-unavailable", ["train.device=cuda"], "train.device: 'cuda' is not available"),
    ("on-divergence", ["train.on_divergence=ignore"], "train.on_divergence: Input should be "
                                                      "'stop' or 'rollback'"),
    ("rollback-factor", ["train.rollback_lr_factor=2"], "train.rollback_lr_factor:"),
    ("cache-size", ["cache.size=0"], "cache.size:"),
    ("teacher-path-suffix", ["teacher.path=teacher.pt"], "teacher.path: must be "
                                                         "a .safetensors"),
    ("teacher-path-missing", ["teacher.path=/nonexistent/t.safetensors"],
     "teacher.path: teacher file not found"),
    ("teacher-other-data", ["data=digits"], "teacher.path: "),
    ("lora-rank-too-large", ["student.parameterization=lora", "student.lora_rank=4096"],
     "student.lora_rank: LoRA rank 4096 exceeds"),
    ("lora-targets-none-match", ["student.parameterization=lora", "student.lora_rank=1",
                                 "student.lora_targets=[nothing_here]"],
     "student.lora_targets:"),
    ("override-without-equals", ["train.lr"], "override 'train.lr' must look like"),
    ("override-not-a-section", ["train=3", "train.lr=1"], "'train' is not a section"),
    ("section-wrong-type", ["train=3"], "train: Input should be"),
]


@pytest.fixture
def base_args(rel_teacher_path: Path, rel_cache_dir: Path, tmp_path: Path) -> list[str]:
    return ["--out", str(tmp_path / "run"), "--quiet", "data=checkerboard",
            f"teacher.path={rel_teacher_path}", f"cache.dir={rel_cache_dir}",
            "cache.size=256", "cache.shard_size=128", "train.iterations=2",
            "train.batch_size=16"]


def _one_line_error(capsys: pytest.CaptureFixture[str], code: int) -> str:
    out = capsys.readouterr()
    assert code == 2, out.err
    lines = out.err.strip().splitlines()
    assert len(lines) == 1, out.err
    assert "Traceback" not in out.err and lines[0].startswith("error: ")
    return lines[0]


@pytest.mark.parametrize(("overrides", "expect"), [c[1:] for c in DISTILL_CASES],
                         ids=[c[0] for c in DISTILL_CASES])
def test_malformed_distill_config(base_args: list[str], overrides: list[str], expect: str,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    line = _one_line_error(capsys, distill_main([*base_args, *overrides]))
    assert expect in line


def test_teacher_file_of_the_wrong_kind_or_shape(base_args: list[str], tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    wrong_kind = tmp_path / "student.safetensors"
    save_tensors(wrong_kind, {"w": torch.zeros(2)}, "student")
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00\x01not a safetensors file")
    net = {"type": "resmlp", "data_shape": [3], "hidden": 16, "depth": 1, "emb": 8,
           "num_classes": 0}
    three_d = tmp_path / "three_d.safetensors"
    save_denoiser(three_d, denoiser_from_config({"network": net}), {"network": net})
    for path, expect in [(wrong_kind, "holds 'student', expected 'denoiser'"),
                         (garbage, "is not a readable safetensors file"),
                         (three_d, "takes samples of shape (3,) but data 'checkerboard' has "
                                   "shape (2,)")]:
        line = _one_line_error(capsys, distill_main([*base_args, f"teacher.path={path}"]))
        assert line.startswith("error: teacher.path: ") and expect in line, line


def test_config_file_problems(base_args: list[str], tmp_path: Path,
                              capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nope.yaml"
    not_mapping = tmp_path / "list.yaml"
    not_mapping.write_text("- a\n- b\n")
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("train: {lr: [\n")
    nested_unknown = tmp_path / "nested.yaml"
    nested_unknown.write_text("train:\n  iterations: 2\n  warmup_steps: 3\n")
    for path, expect in [(missing, "config file not found"),
                         (not_mapping, "must hold a mapping"),
                         (bad_yaml, "is not valid YAML"),
                         (nested_unknown, "train.warmup_steps: unknown key")]:
        line = _one_line_error(capsys, distill_main(["--config", str(path), *base_args]))
        assert expect in line, line


def test_out_and_cache_paths(base_args: list[str], tmp_path: Path,
                             capsys: pytest.CaptureFixture[str]) -> None:
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    line = _one_line_error(capsys, distill_main([*base_args, "--out", str(a_file)]))
    assert line.startswith("error: --out: ")
    line = _one_line_error(capsys, distill_main([*base_args, f"cache.dir={a_file}"]))
    assert line.startswith("error: cache.dir: ")
    # a fresh run must not mix with an existing run's checkpoints
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "ckpt_00000005.safetensors").write_bytes(b"x")
    line = _one_line_error(capsys, distill_main(base_args))
    assert "already holds checkpoints" in line and "--resume" in line
    # an unknown option: argparse's error is one line too
    line = _one_line_error(capsys, distill_main([*base_args, "--bogus"]))
    assert "--bogus" in line


def test_absurd_lr_diverges_with_a_one_line_error(base_args: list[str], tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    line = _one_line_error(capsys, distill_main([*base_args, "train.lr=1e30",
                                                 "train.iterations=20", "train.ckpt_every=1"]))
    assert "loss term" in line and "at step" in line, line
    # whatever was checkpointed before the NaN is finite (a NaN state is never written)
    from fewstep.distill.engine.state import first_non_finite, list_checkpoints
    from fewstep.utils.files import load_tensors

    for p in list_checkpoints(tmp_path / "run" / "checkpoints"):
        assert first_non_finite(load_tensors(p)[0]) is None


def test_config_paths_are_expanded_resolved_and_nul_free(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    cfg = validate(DistillConfig, {"cache": {"dir": "~/c/../cache"},
                                   "teacher": {"path": "sub/t.safetensors"}})
    assert cfg.cache.dir == str((tmp_path / "cache").resolve())
    assert cfg.teacher.path == str((tmp_path / "sub" / "t.safetensors").resolve())
    for bad, field in [({"cache": {"dir": "a\x00b"}}, "cache.dir"),
                       ({"cache": {"dir": " "}}, "cache.dir"),
                       ({"teacher": {"path": "t\x00.safetensors"}}, "teacher.path")]:
        with pytest.raises(ConfigError, match=rf"{field}: must"):
            validate(DistillConfig, bad)


TEACHER_CASES: list[tuple[list[str], str]] = [
    (["data=cifar"], "data: unknown data set"),
    (["steps=0"], "steps: Input should be greater than or equal to 1"),
    (["network.hidden=4"], "network.hidden:"),
    (["lr=-1"], "lr: Input should be greater than 0"),
    (["prediction=score"], "prediction: Input should be"),
    (["network.width=3"], "network.width: unknown key"),
]


@pytest.mark.parametrize(("overrides", "expect"), TEACHER_CASES,
                         ids=[c[0][0] for c in TEACHER_CASES])
def test_malformed_teacher_config(overrides: list[str], expect: str, tmp_path: Path) -> None:
    res = CliRunner().invoke(app, ["teacher", "train", "--out", str(tmp_path / "t.safetensors"),
                                   "--quiet", *overrides])
    assert res.exit_code == 2, res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and expect in lines[0], res.stderr
    assert "Traceback" not in res.output
    assert res.exception is None or isinstance(res.exception, SystemExit)


def test_real_processes_print_one_line_and_exit_2(tmp_path: Path) -> None:
    """End to end, as a user sees it (separate interpreters, no pytest in between)."""
    env = subprocess_env()
    for cmd, expect in [
        ([sys.executable, "-c", SUBPROCESS_MAIN, "--out", str(tmp_path / "r"),
          "student.num_steps=0"], "student.num_steps"),
        ([sys.executable, "-m", "fewstep", "teacher", "train", "--out",
          str(tmp_path / "t.safetensors"), "steps=-3"], "steps"),
    ]:
        res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
        assert res.returncode == 2, res.stderr
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and expect in lines[0], res.stderr
        assert "Traceback" not in res.stderr


def test_at_least_twenty_malformed_inputs_are_covered() -> None:
    assert len(DISTILL_CASES) + len(TEACHER_CASES) + 3 + 4 + 4 >= 20


def test_the_write_probe_leaves_no_folder_behind(tmp_path: Path) -> None:
    from fewstep.app.validation import writable

    (tmp_path / "kept").mkdir()
    writable(tmp_path / "kept" / "a" / "b" / "out.safetensors")
    writable(tmp_path / "new_run", is_dir=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept"]
    assert not any((tmp_path / "kept").iterdir())
