"""``fewstep export`` on a real (tiny) bf16 Z-Image run: the model card's code, run where
fewstep cannot be imported, samples through the stock pipeline's ``__call__`` the images of the
in-memory EMA student (the referenced base and the copied base alike)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from benchmarks.export_roundtrip import PROMPTS, run_snippets
from fewstep.app.cli import app
from fewstep.distill.config import DistillConfig
from fewstep.distill.trainer import Trainer
from fewstep.export.model_card import snippet_from_card
from fewstep.export.student_pipeline import StudentPipeline
from fewstep.presets import preset_path
from fewstep.testing import build_tiny_zimage_pipeline
from fewstep.testing.tiny_pipelines import TINY_MAX_SEQ
from fewstep.utils.config_files import load_config


def test_cli_export_of_a_bf16_run_loads_without_fewstep(tmp_path: Path):
    build_tiny_zimage_pipeline(seed=0).save_pretrained(tmp_path / "zimage",
                                                       safe_serialization=True)
    (tmp_path / "prompts.txt").write_text("\n".join(PROMPTS) + "\n")
    cfg = load_config(DistillConfig, preset_path("tiny_zimage"), [
        f"teacher.pretrained={tmp_path / 'zimage'}", f"teacher.prompts={tmp_path / 'prompts.txt'}",
        f"cache.dir={tmp_path / 'cache'}", f"teacher.max_sequence_length={TINY_MAX_SEQ}",
        "teacher.dtype=bfloat16", "train.iterations=2"])
    tr = Trainer(cfg, tmp_path / "run", progress=False)
    tr.train()
    jobs = []
    for comps in ("auto", "full"):  # the base referenced, or copied into the folder
        exp = tmp_path / f"exp_{comps}"
        r = CliRunner().invoke(app, ["export", "--run", str(tmp_path / "run"), "--out",
                                     str(exp), "--components", comps])
        assert r.exit_code == 0, r.output
        card = (exp / "README.md").read_text()
        assert "turbo_pp" in card and "final_losses" in card
        info = json.loads((exp / "fewstep_student.json").read_text())
        assert info["dtypes"] == {"pipeline": "bfloat16", "denoiser": "bfloat16"}
        assert info["base"]["copied"] == (comps == "full")
        assert (exp / "transformer").is_dir() == (comps == "full")
        (tmp_path / f"snippet_{comps}.py").write_text(snippet_from_card(card))
        jobs.append({"snippet": str(tmp_path / f"snippet_{comps}.py"), "seed": 3,
                     "out": str(tmp_path / f"out_{comps}.safetensors"), "inputs": PROMPTS})
    assert run_snippets(jobs, tmp_path) == [{"imports_fewstep": False}] * 2
    # the in-memory EMA student on the noise the export draws for seed 3, decoded
    x, eps = StudentPipeline.from_pretrained(tmp_path / "exp_auto")._noises(
        len(PROMPTS), torch.Generator().manual_seed(3))
    with torch.no_grad():
        cond = tr.teacher.problem.cond_map(torch.arange(len(PROMPTS)))
        x0 = tr.ema.generate(x, cond, step_noises=eps).sample
        want = (tr.teacher.codec.decode(x0).float() / 2 + 0.5).clamp(0, 1)
    outs = [load_file(job["out"])["images"] for job in jobs]
    assert torch.equal(outs[0], outs[1])  # referenced and copied base: the same images
    assert float((outs[0] - want).abs().max()) <= 2e-2  # bf16 pipeline, output_type="np"
