"""Exported students sampled by plain diffusers in a process where fewstep cannot be imported:
the README's loading snippet reproduces the in-memory student (the eps-UNet: LoRA / decoupled /
shared, float32 and bfloat16; pipeline teachers read generically: Z-Image bfloat16 LoRA and
float32 decoupled, Flux LoRA). The card-vs-``StudentPipeline`` check of pipeline students at
more settings is tests/export/test_export_pipeline_student.py."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.export_roundtrip import all_cases, run

CASES = [c.name for c in all_cases() if c.family == "unet_eps"] + [
    "zimage_lora_bfloat16", "zimage_decoupled_float32", "flux_lora_float32"]


@pytest.fixture(scope="module")
def results() -> dict[str, dict]:
    return {r["name"]: r for r in run(None, CASES)["cases"]}


def test_fewstep_is_blocked_in_the_snippet_process(tmp_path: Path):
    # fewstep is importable here (editable install), so the block is what stops it
    from benchmarks.export_roundtrip import BLOCK_FEWSTEP

    code = BLOCK_FEWSTEP + "import fewstep\n"
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                          text=True, check=False)
    assert proc.returncode != 0 and "import of fewstep halted" in proc.stderr


@pytest.mark.parametrize("name", CASES)
def test_snippet_reproduces_student(results, name):
    r = results[name]
    assert r["imports_fewstep"] is False
    if r["family"] == "unet_eps":  # the snippet is fewstep's sampler written out: bit-equal
        assert r["images_equal"], r["max_abs_diff"]
        assert r["fewstep_reload_max_abs_diff"] == 0.0
    else:  # the stock pipeline's __call__ (output_type="np") on the same noise
        assert r["max_abs_diff"] <= (1e-4 if r["dtype"] == "float32" else 2e-2), r
        assert r["fewstep_reload_max_abs_diff"] <= 1e-5, r


def test_lora_exports_reference_the_base(results):
    lora = results["zimage_lora_bfloat16"]
    assert "transformer/config.json" not in lora["files"]
    assert {"step0/adapter.safetensors", "step1/adapter.safetensors"} <= set(lora["files"])
    assert lora["bytes"] < results["zimage_decoupled_float32"]["bytes"] / 10
    dec = results["zimage_decoupled_float32"]["files"]
    assert {"model_index.json", "transformer/config.json", "transformer_step1/config.json",
            "vae/config.json", "README.md", "fewstep_student.json"} <= set(dec)
    shared = results["unet_eps_shared_float32"]["files"]
    assert "unet/config.json" in shared and not any("unet_step" in f for f in shared)
    flux = results["flux_lora_float32"]["files"]
    assert "model_index.json" not in flux and "step1/adapter_config.json" in flux
