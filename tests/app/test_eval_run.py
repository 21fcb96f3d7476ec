"""``fewstep eval --run`` on a real (tiny) Z-Image run: FID-T, CLIP score and diversity in
feature networks named by local path (tiny random CLIP folder and TorchScript network, built
offline), FID against a reference folder, every figure naming its network; the same figures
from the same weights twice."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from fewstep.app.cli import app
from fewstep.distill.config import DistillConfig
from fewstep.distill.trainer import Trainer
from fewstep.presets import preset_path
from fewstep.testing.tiny_features import build_tiny_clip, build_tiny_torchscript
from fewstep.testing.tiny_pipelines import TINY_MAX_SEQ as MAX_SEQ
from fewstep.testing.tiny_pipelines import build_tiny_zimage_pipeline
from fewstep.utils.config_files import load_config

PROMPTS = ["a red cat", "a photo of a big blue dog", "the green tree", "a small yellow flower"]


@pytest.fixture(scope="module")
def prompt_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("eval_run")
    build_tiny_zimage_pipeline(seed=0).save_pretrained(root / "zimage", safe_serialization=True)
    (root / "prompts.txt").write_text("\n".join(PROMPTS) + "\n")
    cfg = load_config(DistillConfig, preset_path("tiny_zimage"), [
        f"teacher.pretrained={root / 'zimage'}", f"teacher.prompts={root / 'prompts.txt'}",
        f"cache.dir={root / 'cache'}", f"teacher.max_sequence_length={MAX_SEQ}",
        "train.iterations=2"])
    Trainer(cfg, root / "run", progress=False).train()
    build_tiny_clip(root / "clip")
    build_tiny_torchscript(root / "inception.pt")
    ref = root / "reference"
    ref.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(ref / f"{i}.png")
    return root


def _eval(args: list[str]) -> dict:
    r = CliRunner().invoke(app, ["eval", *args])
    assert r.exit_code == 0, r.output
    return json.loads(r.output[r.output.index("{"):])


def test_eval_run_in_named_feature_networks(prompt_run, tmp_path):
    root = prompt_run
    out = tmp_path / "metrics.json"
    m = _eval(["--run", str(root / "run"), "--features", f"clip:{root / 'clip'}",
               "--prompts", "4", "--seeds", "3", "--out", str(out)])
    assert json.loads(out.read_text()) == m
    s = m["student_2"]
    assert s["features"].startswith(f"clip:{root / 'clip'} (CLIPModel") and "sha256" in \
        s["features"]
    assert s["clip"] == s["features"] == s["feature_space"]
    for k in ("fid_t", "fid_t_teacher_floor", "clip_score", "clip_score_teacher", "diversity",
              "diversity_teacher", "diversity_ratio", "saturation_ratio"):
        assert np.isfinite(s[k]), k
    assert s["num_images"] == 12 and m["settings"]["teacher_steps"] == 4
    again = _eval(["--run", str(root / "run"), "--features", f"clip:{root / 'clip'}",
                   "--prompts", "4", "--seeds", "3"])
    assert again["student_2"]["fid_t"] == s["fid_t"]  # fixed noise: reproducible
    ts = _eval(["--run", str(root / "run"), "--features",
                f"torchscript:{root / 'inception.pt'}", "--clip", str(root / "clip"),
                "--reference", str(root / "reference"), "--prompts", "2", "--seeds", "2"])
    t = ts["student_2"]
    assert t["features"].startswith(f"torchscript:{root / 'inception.pt'} (sha256")
    assert t["clip"].startswith(f"clip:{root / 'clip'}")
    assert np.isfinite(t["fid_ref"]) and np.isfinite(t["fid_ref_teacher"])


def test_eval_run_bad_inputs_are_one_line(prompt_run):
    root = prompt_run
    for args, msg in ((["--features", "digits_classifier"], "with --run use pixels"),
                      (["--features", f"clip:{root / 'nope'}"], "does not exist"),
                      (["--student", str(root / "run" / "student.safetensors")],
                       "drop --teacher / --student / --data")):
        r = CliRunner().invoke(app, ["eval", "--run", str(root / "run"), *args])
        assert r.exit_code == 2 and msg in r.output, r.output
    r = CliRunner().invoke(app, ["eval", "--run", str(root)])
    assert r.exit_code == 2 and "is not a finished run" in r.output
