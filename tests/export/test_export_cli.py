"""``fewstep export`` on a real (tiny) bf16 Z-Image run: the model card's snippet, run where
fewstep cannot be imported, gives the in-memory EMA student's images exactly."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from benchmarks.export_roundtrip import MAX_SEQ, PROMPTS, run_snippets, tiny_zimage_pipeline
from fewstep.app.cli import app
from fewstep.distill.config import DistillConfig
from fewstep.distill.trainer import Trainer
from fewstep.export.model_card import snippet_from_card
from fewstep.presets import preset_path
from fewstep.teachers.diffusers.latents import decode
from fewstep.teachers.diffusers.prompt_cache import pipeline_encode_fn
from fewstep.teachers.diffusers.zimage import PromptEmbeds
from fewstep.utils.config_files import load_config


def test_cli_export_of_a_bf16_run_loads_without_fewstep(tmp_path: Path):
    tiny_zimage_pipeline().save_pretrained(tmp_path / "zimage", safe_serialization=True)
    (tmp_path / "prompts.txt").write_text("\n".join(PROMPTS) + "\n")
    cfg = load_config(DistillConfig, preset_path("tiny_zimage"), [
        f"teacher.pretrained={tmp_path / 'zimage'}", f"teacher.prompts={tmp_path / 'prompts.txt'}",
        f"cache.dir={tmp_path / 'cache'}", f"teacher.max_sequence_length={MAX_SEQ}",
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
    with torch.no_grad():
        encode = pipeline_encode_fn(tr.teacher.pipeline, MAX_SEQ, "cpu")
        cond = PromptEmbeds.from_list(encode(PROMPTS))
        g = torch.Generator().manual_seed(3)
        noise = torch.randn((len(PROMPTS), *tr.teacher.problem.data_shape), generator=g)
        x0 = tr.ema.generate(noise, cond, generator=g).sample
        want = decode(tr.teacher.pipeline.vae, x0).float()
    for job in jobs:
        assert torch.equal(load_file(job["out"])["images"], want)
