"""The export folder itself: diffusers key format, loading with stock diffusers classes,
dtypes, the model card, components full / reference, and ``fewstep export`` errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from benchmarks.export_roundtrip import Case, build_student, load_teacher, save_teacher
from fewstep.export.diffusers_export import (
    export_student,
    normalise_components,
)
from fewstep.export.student_pipeline import StudentPipeline


@pytest.fixture(scope="module")
def teachers(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("teachers")


def _export(teachers: Path, out: Path, case: Case, components: str = "auto"):
    teacher = load_teacher(case.family, save_teacher(case.family, case.dtype, teachers),
                           case.dtype)
    st = build_student(teacher, case)
    export_student(st, out, teacher.config, teacher.pipeline, components, teacher.num_classes,
                   teacher.latent_shape, run={"method": "turbo_pp", "student": {"num_steps": 2}},
                   metrics={"fid": 1.5})
    return teacher, st


def test_lora_adapter_files_are_diffusers_format(teachers, tmp_path):
    from diffusers import ZImagePipeline

    teacher, st = _export(teachers, tmp_path / "e", Case("zimage", "lora", "bfloat16"))
    path = tmp_path / "e" / "step1" / "adapter.safetensors"
    with safe_open(str(path), framework="pt") as f:
        keys = list(f.keys())
        meta = json.loads(f.metadata()["lora_adapter_metadata"])
        dtypes = {f.get_slice(k).get_dtype() for k in keys}
    assert keys and all(k.startswith("transformer.layers.") or k.startswith("transformer.")
                        for k in keys)
    assert all(k.endswith((".lora_A.weight", ".lora_B.weight")) for k in keys)
    assert not any("{step}" in k or ".step1." in k for k in keys)
    assert meta["transformer.r"] == 4 and meta["transformer.lora_alpha"] == 8.0
    assert dtypes == {"F32"}  # adapters keep their (float32) training dtype
    # stock diffusers: no missing keys, no NaNs, and the adapter changes the output
    pipe = ZImagePipeline.from_pretrained(teacher.config["pretrained"], dtype=torch.bfloat16)
    pipe.load_lora_weights(str(tmp_path / "e" / "step1"), weight_name="adapter.safetensors",
                           adapter_name="step1")
    layer = pipe.transformer.layers[0].attention.to_q
    assert layer.scaling["step1"] == 2.0
    assert torch.equal(layer.lora_B["step1"].weight.float(),
                       st.lora.base.transformer.layers[0].attention.to_q.lora_B["step1"]
                       .weight.to(torch.bfloat16).float())


def test_decoupled_export_loads_with_stock_classes(teachers, tmp_path):
    from diffusers import DiffusionPipeline, ZImageTransformer2DModel

    _, st = _export(teachers, tmp_path / "e", Case("zimage", "decoupled", "bfloat16"))
    net = ZImageTransformer2DModel.from_pretrained(tmp_path / "e", subfolder="transformer_step1")
    assert net.dtype == torch.float32  # trained in float32: saved and reloaded as such
    want = st.steps[1].transformer.state_dict()
    assert all(torch.equal(v, want[k]) for k, v in net.state_dict().items())
    pipe = DiffusionPipeline.from_pretrained(tmp_path / "e", dtype=torch.bfloat16)
    assert type(pipe).__name__ == "ZImagePipeline"
    for comp in ("vae", "text_encoder"):  # saved in the dtype they were trained with
        (path,) = (tmp_path / "e" / comp).glob("*.safetensors")
        with safe_open(str(path), framework="pt") as f:
            assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"BF16"}  # noqa: SIM118
    sp = StudentPipeline.from_pretrained(tmp_path / "e")
    assert sp.reading.pipe.vae.dtype == torch.bfloat16  # fewstep reloads the VAE as saved


def test_model_card_and_info(teachers, tmp_path):
    _export(teachers, tmp_path / "e", Case("unet_eps", "lora", "float32", "ddim"))
    card = (tmp_path / "e" / "README.md").read_text()
    for needle in ("turbo_pp", "`lora` (rank 4, alpha 8)", "`ddim`", "[1.0, 0.6",
                   "UNet timesteps", '"fid": 1.5', "def few_step(", "adapter_config.json"):
        assert needle in card, needle
    assert "fewstep" not in card.split("```python")[1].split("```")[0].replace(
        "fewstep_student", "")  # the snippet never imports fewstep
    info = json.loads((tmp_path / "e" / "fewstep_student.json").read_text())
    assert info["base"]["copied"] is False and info["base"]["fingerprint"]
    body = card.split("def few_step(")[1].split("```")[0]
    assert len([ln for ln in body.splitlines() if ln.strip()]) <= 15


def test_components_full_copies_the_base(teachers, tmp_path):
    from diffusers import ZImagePipeline

    _export(teachers, tmp_path / "e", Case("zimage", "lora", "float32"), "full")
    assert (tmp_path / "e" / "model_index.json").is_file()
    assert (tmp_path / "e" / "transformer" / "config.json").is_file()
    info = json.loads((tmp_path / "e" / "fewstep_student.json").read_text())
    assert info["base"] == {**info["base"], "copied": True, "source": "."}
    pipe = ZImagePipeline.from_pretrained(tmp_path / "e")  # the base without LoRA layers
    assert type(pipe.transformer.layers[0].attention.to_q).__name__ == "Linear"


def test_components_values():
    assert normalise_components("auto", lora=True) == "reference"
    assert normalise_components("copy", lora=True) == "full"
    assert normalise_components("reference", lora=False) == "full"
    with pytest.raises(ValueError, match="components must be"):
        normalise_components("everything", lora=True)
