"""The command line: help on every subcommand, and bad input -> one line, exit code 2."""

import subprocess
import sys

import pytest
import torch

from fewstep.utils.files import save_tensors

#: seconds before a CLI subprocess counts as hung: a guard, not a speed test (busy machines)
HANG_GUARD = 1800


def run(*args, timeout=HANG_GUARD):
    return subprocess.run([sys.executable, "-m", "fewstep", *args], capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.parametrize("cmd", [[], ["teacher", "train"], ["classifier", "train"], ["sample"],
                                 ["eval"], ["demo"], ["distill"]])
def test_help(cmd):
    r = run(*cmd, "--help")
    assert r.returncode == 0, r.stderr
    assert "Usage" in r.stdout


def _bad(r, needle):
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr
    assert needle in r.stderr, r.stderr


def test_missing_checkpoint(tmp_path):
    _bad(run("eval", "--teacher", str(tmp_path / "nope.safetensors"), "--num", "10"),
         "not found")


def test_wrong_shaped_checkpoint(tmp_path, toy_teacher_path):
    from fewstep.utils.files import load_tensors

    tensors, cfg = load_tensors(toy_teacher_path)
    cfg["network"]["hidden"] = 48  # the weights no longer fit the config
    bad = tmp_path / "bad.safetensors"
    save_tensors(bad, tensors, "denoiser", cfg)
    _bad(run("eval", "--teacher", str(bad), "--data", "checkerboard", "--num", "10"),
         "does not fit")


def test_not_a_safetensors_file(tmp_path):
    p = tmp_path / "junk.safetensors"
    p.write_bytes(b"\x00" * 100)
    _bad(run("eval", "--teacher", str(p), "--num", "10"), "not a readable safetensors")


def test_wrong_kind_of_file(tmp_path):
    p = tmp_path / "other.safetensors"
    save_tensors(p, {"w": torch.zeros(2)}, "classifier", {})
    _bad(run("eval", "--teacher", str(p), "--num", "10"), "expected 'denoiser'")


def test_unknown_sampler(toy_teacher_path):
    _bad(run("eval", "--teacher", str(toy_teacher_path), "--data", "checkerboard",
             "--samplers", "teacher_8,heun_3", "--num", "10"), "unknown sampler 'heun_3'")


def test_zero_steps(toy_teacher_path):
    _bad(run("eval", "--teacher", str(toy_teacher_path), "--data", "checkerboard",
             "--samplers", "teacher_0", "--num", "10"), "steps must be >= 1")


def test_student_sampler_without_student(toy_teacher_path):
    _bad(run("eval", "--teacher", str(toy_teacher_path), "--data", "checkerboard",
             "--samplers", "student_2", "--num", "10"), "needs a student")


def test_config_field_of_wrong_type(tmp_path):
    _bad(run("teacher", "train", "--out", str(tmp_path / "t.safetensors"), "steps=many"),
         "steps")


def test_unknown_config_key(tmp_path):
    _bad(run("teacher", "train", "--out", str(tmp_path / "t.safetensors"), "nework.hidden=3"),
         "nework: unknown key")


def test_eval_and_sample_on_a_toy_teacher(tmp_path, toy_teacher_path):
    r = run("eval", "--teacher", str(toy_teacher_path), "--data", "checkerboard",
            "--samplers", "teacher_8,teacher_1", "--num", "500", "--out",
            str(tmp_path / "m.json"))
    assert r.returncode == 0, r.stderr
    import json

    m = json.loads((tmp_path / "m.json").read_text())
    assert m["teacher_8"]["swd"] < m["teacher_1"]["swd"]
    r = run("sample", "--teacher", str(toy_teacher_path), "--data", "checkerboard",
            "--samplers", "teacher_8,teacher_2", "--num", "200", "--out", str(tmp_path / "s"))
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "s" / "grid.png").stat().st_size > 1000


def test_one_entry_point_overrides_anywhere_and_info_logs(tmp_path, toy_teacher_path, capsys):
    """``python -m fewstep`` / ``python -m fewstep.distill`` / ``fewstep`` are one typer app:
    overrides before and after options, --preset accepted, "resumed from" printed."""
    import json

    from fewstep.app.cli import run as cli_run
    from fewstep.distill.__main__ import main as distill_main

    out = tmp_path / "run"
    common = [f"teacher.path={toy_teacher_path}", f"cache.dir={tmp_path / 'cache'}",
              "cache.size=64", "cache.shard_size=64", "train.batch_size=16", "eval.num_samples=10",
              "gan.layers=[-1,-2]"]
    # overrides on both sides of the options; --preset; mixed_precision=no is not a boolean
    rc = cli_run(["distill", "data=checkerboard", "--preset", "turbo_pp_checkerboard",
                  *common[:3], "--out", str(out), "--quiet", *common[3:],
                  "train.iterations=2", "train.ckpt_every=1", "train.mixed_precision=no"])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    done = json.loads(cap.out.strip().splitlines()[-1])
    assert done["step"] == 2 and done["out"] == str(out)
    # the same command through python -m fewstep.distill: resume and its info log
    rc = distill_main(["--preset", "turbo_pp_checkerboard", "--out", str(out), "--resume",
                       "data=checkerboard", *common, "train.iterations=3",
                       "train.ckpt_every=1", "train.mixed_precision=no"])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    assert "resumed from" in cap.err and "ckpt_00000002" in cap.err
    assert json.loads(cap.out.strip().splitlines()[-1])["step"] == 3


def test_python_dash_m_fewstep_and_bad_options():
    for mod in ("fewstep", "fewstep.distill"):
        r = subprocess.run([sys.executable, "-m", mod, *([] if mod == "fewstep.distill"
                                                          else ["distill"]), "--bogus"],
                           capture_output=True, text=True,
                           timeout=HANG_GUARD)
        _bad(r, "No such option: --bogus")
        assert len(r.stderr.strip().splitlines()) == 1
    # method= switches a preset (its foreign sections are dropped); a section set on the
    # command line that the method does not read is refused
    r = subprocess.run([sys.executable, "-m", "fewstep", "plan", "--preset", "demo",
                        "method=ladd", "dm.weight=1"], capture_output=True, text=True,
                       timeout=HANG_GUARD)
    _bad(r, "dm: section not used by method ladd")
