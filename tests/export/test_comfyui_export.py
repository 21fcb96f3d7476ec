"""``fewstep export --format comfyui | both`` on a real (tiny) Z-Image run: per-step LoRA files
diffusers' Z-Image loader reads with the EMA student's weights, self-describing headers, a
workflow that passes the node description; the checker catches broken graphs; students
without a ComfyUI export are refused before anything is written."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from fewstep.app.cli import app
from fewstep.distill.config import DistillConfig
from fewstep.distill.trainer import Trainer
from fewstep.export.comfyui_nodes import NODES, check_workflow
from fewstep.export.comfyui_workflow import student_workflow
from fewstep.export.metadata import read_header
from fewstep.presets import preset_path
from fewstep.testing.tiny_pipelines import TINY_MAX_SEQ as MAX_SEQ
from fewstep.testing.tiny_pipelines import build_tiny_zimage_pipeline
from fewstep.utils.config_files import load_config

PROMPTS = ["a red cat", "a photo of a big blue dog"]


@pytest.fixture(scope="module")
def zimage_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Trainer]:
    root = tmp_path_factory.mktemp("comfy_run")
    build_tiny_zimage_pipeline(seed=0).save_pretrained(root / "zimage", safe_serialization=True)
    (root / "prompts.txt").write_text("\n".join(PROMPTS) + "\n")
    cfg = load_config(DistillConfig, preset_path("tiny_zimage"), [
        f"teacher.pretrained={root / 'zimage'}", f"teacher.prompts={root / 'prompts.txt'}",
        f"cache.dir={root / 'cache'}", f"teacher.max_sequence_length={MAX_SEQ}",
        "train.iterations=2", "train.lr=0.01"])
    tr = Trainer(cfg, root / "run", progress=False)
    tr.train()
    return root, tr


def test_export_comfyui_files_load_in_diffusers(zimage_run, tmp_path):
    from diffusers import ZImagePipeline
    from peft.tuners.tuners_utils import BaseTunerLayer

    root, tr = zimage_run
    out = tmp_path / "both"
    r = CliRunner().invoke(app, ["export", "--run", str(root / "run"), "--out", str(out),
                                 "--format", "both"])
    assert r.exit_code == 0, r.output
    assert (out / "fewstep_student.json").is_file()  # the diffusers folder ...
    comfy = out / "comfyui"  # ... with the ComfyUI files beside it
    files = sorted(comfy.glob("*.safetensors"))
    assert [f.name for f in files] == [f"zimage_fewstep2_step{k}of2.safetensors" for k in (1, 2)]
    graph = json.loads((comfy / "workflow_api.json").read_text())
    assert check_workflow(graph) == []
    loras = [n["inputs"]["lora_name"] for n in graph.values()
             if n["class_type"] == "LoraLoaderModelOnly"]
    firsts = [n["inputs"]["sigma"] for n in graph.values() if n["class_type"] == "SetFirstSigma"]
    assert loras == [f.name for f in files]
    assert firsts == pytest.approx([float(s) for s in tr.ema.sigmas])
    net = tr.teacher.pipeline.transformer
    lora = tr.ema.lora
    for k, f in enumerate(files):
        meta = read_header(f)
        assert meta["modelspec.architecture"] == "z-image/lora"
        assert meta["fewstep.key_format"] == "diffusion_model" and meta["fewstep.step"] == str(k)
        assert json.loads(meta["fewstep.sigmas"]) == pytest.approx(tr.ema.sigmas.tolist())
        fresh = copy.deepcopy(net).float()
        ZImagePipeline.load_lora_into_transformer(ZImagePipeline.lora_state_dict(str(f)),
                                                  transformer=fresh, adapter_name="s")
        diffs = []
        for name, layer in lora.lora_layers():
            mod = fresh.get_submodule(name.removeprefix("transformer."))
            assert isinstance(mod, BaseTunerLayer)
            s = f"step{k}"
            want = layer.scaling * (layer.lora_B[s].weight.float() @ layer.lora_A[s].weight.float())
            diffs.append(float((mod.get_delta_weight("s").float() - want).abs().max()))
        assert max(diffs) <= 1e-6
        assert float(lora.lora_layers()[0][1].lora_B[f"step{k}"].weight.abs().max()) > 0


def test_students_without_comfyui_export_are_refused_before_writing(zimage_run, tmp_path):
    root, _ = zimage_run
    out = tmp_path / "x"
    r = CliRunner().invoke(app, ["export", "--run", str(root / "run"), "--out", str(out),
                                 "--format", "both", "--key-format", "kohya"])
    assert r.exit_code == 2 and "--format both: key format 'kohya' is not read for " \
        "ZImageTransformer2DModel" in r.output
    assert not out.exists()
    r = CliRunner().invoke(app, ["export", "--run", str(root / "run"), "--out", str(out),
                                 "--format", "onnx"])
    assert r.exit_code == 2 and "--format: 'onnx' is not one of" in r.output


def test_flux_workflow_with_guidance_and_the_checker_catches_mistakes():
    g = student_workflow("FluxTransformer2DModel", ["a.safetensors", "b.safetensors"],
                         [1.0, 0.6], "ddim", prompt="a cat", width=1024, height=1024, seed=7,
                         guidance=3.5)
    assert check_workflow(g) == []
    seeds = [n["inputs"]["noise_seed"] for n in g.values() if n["class_type"] == "RandomNoise"]
    assert seeds == [7, 7]  # ddim with K = 2: the first step's noise again
    assert any(n["class_type"] == "FluxGuidance" and n["inputs"]["guidance"] == 3.5
               for n in g.values())
    bad = json.loads(json.dumps(g))
    sampler = next(k for k, n in bad.items() if n["class_type"] == "SamplerCustomAdvanced")
    unet = next(k for k, n in bad.items() if n["class_type"] == "UNETLoader")
    bad[sampler]["inputs"]["sigmas"] = [unet, 0]
    bad[unet]["inputs"]["weight_dtype"] = "int4"
    bad[unet]["inputs"]["extra"] = 1
    del bad[sampler]["inputs"]["noise"]
    errs = check_workflow(bad)
    assert any("expects SIGMAS, linked to UNETLoader output MODEL" in e for e in errs)
    assert any("'int4' is not one of" in e for e in errs)
    assert any("unknown input 'extra'" in e for e in errs)
    assert any("missing input 'noise'" in e for e in errs)
    loop = {"1": {"class_type": "BasicGuider", "inputs": {"model": ["2", 0],
                                                          "conditioning": ["3", 0]}},
            "2": {"class_type": "LoraLoaderModelOnly", "inputs": {
                "model": ["2", 0], "lora_name": "x", "strength_model": 1.0}},
            "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "t", "clip": ["4", 0]}},
            "4": {"class_type": "CLIPLoader", "inputs": {"clip_name": "c", "type": "lumina2"}}}
    assert check_workflow(loop) == ["the graph has a cycle"]
    with pytest.raises(ValueError, match="fresh: any K; ddim: K = 2"):
        student_workflow("FluxTransformer2DModel", ["a", "b", "c"], [1.0, 0.6, 0.3], "ddim",
                         prompt="a", width=64, height=64)
    with pytest.raises(ValueError, match="no ComfyUI workflow for UNet2DConditionModel"):
        student_workflow("UNet2DConditionModel", ["a", "b"], [1.0, 0.6], "fresh", prompt="a",
                         width=64, height=64)
    assert set(NODES) >= {"SamplerCustomAdvanced", "SetFirstSigma", "LoraLoaderModelOnly"}


def test_every_flow_family_has_a_valid_workflow():
    from fewstep.export.comfyui_workflow import FAMILY_NODES

    for cls in FAMILY_NODES:
        g = student_workflow(cls, ["a.safetensors", "b.safetensors"], [1.0, 0.75], "fresh",
                             prompt="a cat", width=1024, height=1024, shift=3.0)
        assert check_workflow(g) == [], cls
        assert torch.tensor([n["inputs"]["noise_seed"] for n in g.values()
                             if n["class_type"] == "RandomNoise"]).tolist() == [0, 1]
