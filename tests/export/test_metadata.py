"""Exported files describe themselves: ModelSpec + fewstep sampler keys in every student
safetensors header (the hash re-computed from the file; safetensors and diffusers still load
the files unchanged), and the model card's front matter read back by huggingface_hub."""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from benchmarks.export_roundtrip import Case, build_student, load_teacher, save_teacher
from fewstep.export import metadata
from fewstep.export.diffusers_export import export_student
from fewstep.export.metadata import read_header, stamp_safetensors
from fewstep.export.student_pipeline import StudentPipeline


def _sha256_after_header(path: Path) -> str:
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return "0x" + hashlib.sha256(raw[8 + n:]).hexdigest()


@pytest.mark.parametrize("in_memory", [True, False])
def test_stamp_keeps_tensors_and_old_keys(tmp_path, monkeypatch, in_memory):
    if not in_memory:  # the streamed path for large files
        monkeypatch.setattr(metadata, "IN_MEMORY_BYTES", 0)
    t = {"a": torch.randn(3, 5), "b": torch.arange(7, dtype=torch.int64),
         "c": torch.randn(2, dtype=torch.bfloat16)}
    path = tmp_path / "f.safetensors"
    save_file(t, str(path), metadata={"format": "pt", "lora_adapter_metadata": "{}"})
    stamp_safetensors(path, {"modelspec.title": "x", "fewstep.step": "0"})
    got = load_file(str(path))
    assert all(torch.equal(got[k], t[k]) for k in t)
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    assert meta["lora_adapter_metadata"] == "{}" and meta["fewstep.step"] == "0"
    assert meta["modelspec.hash_sha256"] == _sha256_after_header(path)
    (n,) = struct.unpack("<Q", path.read_bytes()[:8])
    assert n % 8 == 0
    with pytest.raises(TypeError, match="must be strings"):
        stamp_safetensors(path, {"fewstep.step": 0})  # type: ignore[dict-item]


def test_lora_export_headers_and_front_matter(tmp_path):
    import diffusers
    from huggingface_hub import ModelCard

    case = Case("flux", "lora", "float32")
    folder = save_teacher(case.family, case.dtype, tmp_path)
    (folder / "README.md").write_text("---\nlicense: apache-2.0\n---\n# tiny teacher\n")
    teacher = load_teacher(case.family, folder, case.dtype)
    teacher.config["sampling"] = {"shift": 3.0, "cfg_scale": 1.0}  # as the adapter records
    st = build_student(teacher, case)
    out = tmp_path / "exp"
    export_student(st, out, teacher.config, teacher.pipeline, "auto", 0, teacher.latent_shape,
                   run={"method": "dmd2"})
    info = json.loads((out / "fewstep_student.json").read_text())
    for k, name in enumerate(info["lora"]["files"]):
        meta = read_header(out / name)
        assert meta["modelspec.sai_model_spec"] == "1.0.1"
        assert meta["modelspec.architecture"] == "flux-1-schnell/lora"  # tiny Flux: no guidance
        assert meta["ss_base_model_version"] == "flux1"
        assert meta["modelspec.license"] == "apache-2.0"
        assert meta["modelspec.hash_sha256"] == _sha256_after_header(out / name)
        assert json.loads(meta["fewstep.sigmas"]) == info["sigmas"]
        assert meta["fewstep.step"] == str(k) and meta["fewstep.num_steps"] == "2"
        assert meta["fewstep.transition"] == info["transition"]
        assert meta["fewstep.base_fingerprint"] == info["base"]["fingerprint"]
        assert json.loads(meta["fewstep.shift"]) == info["teacher"]["sampling"]["shift"]
        assert meta["ss_network_dim"] == str(info["lora"]["rank"])
        assert "lora_adapter_metadata" in meta  # diffusers' own key kept
    # diffusers' own LoRA loader still reads the stamped files
    pipe = diffusers.FluxPipeline.from_pretrained(folder)
    pipe.load_lora_weights(str(out / "step1"), weight_name="adapter.safetensors",
                           adapter_name="step1")
    # fewstep's reload gives the student's adapters back
    reloaded = StudentPipeline.from_pretrained(out).student.lora
    for n, p in reloaded.adapter_state_dict(1).items():
        assert torch.equal(p, st.lora.adapter_state_dict(1)[n])
    card = ModelCard.load(out / "README.md").data.to_dict()
    assert card["library_name"] == "diffusers" and card["license"] == "apache-2.0"
    assert card["pipeline_tag"] == "text-to-image"
    assert {"fewstep", "lora", "2-step", "flux"} <= set(card["tags"])
    assert "base_model" not in card  # a local folder is not a hub id


def test_full_export_stamps_each_step_network(tmp_path):
    case = Case("sd", "decoupled", "float32")
    teacher = load_teacher(case.family, save_teacher(case.family, case.dtype, tmp_path),
                           case.dtype)
    st = build_student(teacher, case)
    out = tmp_path / "exp"
    export_student(st, out, teacher.config, teacher.pipeline, "auto", 0, teacher.latent_shape)
    for k, sub in enumerate(("unet", "unet_step1")):
        (f,) = (out / sub).glob("*.safetensors")
        meta = read_header(f)
        assert meta["modelspec.architecture"] == "stable-diffusion-v1"
        assert meta["fewstep.step"] == str(k) and "ss_network_dim" not in meta
        assert meta["modelspec.hash_sha256"] == _sha256_after_header(f)
    vae = next((out / "vae").glob("*.safetensors"))
    assert "fewstep.step" not in read_header(vae)  # the teacher's own components untouched


def test_front_matter_for_a_hub_base_and_unknown_license():
    arch = metadata.architecture_of("UNet2DConditionModel", {"cross_attention_dim": 2048})
    text = metadata.front_matter("stabilityai/stable-diffusion-xl-base-1.0", arch, 2, True, None)
    import yaml

    data = yaml.safe_load(text.strip().strip("-"))
    assert data["base_model"] == "stabilityai/stable-diffusion-xl-base-1.0"
    assert data["base_model_relation"] == "adapter" and data["license"] == "other"
    assert arch.modelspec == "stable-diffusion-xl-v1-base" and arch.ss == "sdxl_base_v1-0"
