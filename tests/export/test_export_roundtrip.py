"""Exported students sampled by plain diffusers in a process where fewstep cannot be imported:
the README's loading snippet reproduces the in-memory student (Z-Image, eps-UNet, and the
``teacher.kind: diffusers`` families SD-style UNet, PixArt-Sigma, Flux; LoRA / decoupled /
shared, float32 and bfloat16)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.export_roundtrip import all_cases, run


@pytest.fixture(scope="module")
def results() -> dict[str, dict]:
    return {r["name"]: r for r in run(None)["cases"]}


def test_fewstep_is_blocked_in_the_snippet_process(tmp_path: Path):
    # fewstep is importable here (editable install), so the block is what stops it
    from benchmarks.export_roundtrip import BLOCK_FEWSTEP

    code = BLOCK_FEWSTEP + "import fewstep\n"
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                          text=True, check=False)
    assert proc.returncode != 0 and "import of fewstep halted" in proc.stderr


@pytest.mark.parametrize("name", [c.name for c in all_cases()])
def test_snippet_reproduces_student(results, name):
    r = results[name]
    assert r["imports_fewstep"] is False
    assert r["fewstep_reload_images_equal"], "StudentPipeline differs from the student"
    if r["dtype"] == "float32":
        assert r["max_abs_diff"] <= 1e-5
    else:  # the bf16 recipe: images from the export equal the in-memory student's
        assert r["images_equal"], r["images_max_abs_diff"]
    if r["transition"] == "ddim" and r["family"] == "zimage":
        assert r["stock_pipeline_max_abs_diff"] is not None
        assert r["stock_pipeline_max_abs_diff"] <= 1e-5


def test_lora_exports_reference_the_base(results):
    lora = results["zimage_lora_bfloat16"]
    assert "transformer/config.json" not in lora["files"]
    assert {"step0/adapter.safetensors", "step1/adapter.safetensors"} <= set(lora["files"])
    assert lora["bytes"] < results["zimage_decoupled_bfloat16"]["bytes"] / 10
    dec = results["zimage_decoupled_float32"]["files"]
    assert {"model_index.json", "transformer/config.json", "transformer_step1/config.json",
            "vae/config.json", "README.md", "fewstep_student.json"} <= set(dec)
    shared = results["unet_eps_shared_float32"]["files"]
    assert "unet/config.json" in shared and not any("unet_step" in f for f in shared)


@pytest.mark.parametrize("family", ["sd", "pixart", "flux"])
def test_generic_families_reproduce_exactly(results, family):
    # the snippet calls the network exactly as fewstep's family table does: bit-equal
    for r in results.values():
        if r["family"] == family:
            assert r["max_abs_diff"] == 0.0 and r["images_equal"], r["name"]
    lora = results[f"{family}_lora_float32"]["files"]
    assert "model_index.json" not in lora and "step1/adapter_config.json" in lora
    comp = "unet" if family == "sd" else "transformer"
    dec = results[f"{family}_decoupled_float32"]["files"]
    assert {"model_index.json", f"{comp}/config.json", f"{comp}_step1/config.json",
            "vae/config.json", "text_encoder/config.json"} <= set(dec)
