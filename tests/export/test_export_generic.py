"""Students of ``teacher.kind: diffusers`` teachers (SD-style UNet, PixArt-Sigma, Flux) exported
in the diffusers format: the teacher's own pipeline class loads the folder, LoRA adapters load
with diffusers' own loader, and a real (tiny) training run goes through ``fewstep export`` and
``fewstep sample --student`` to the in-memory EMA student's images. (The model card code runs
without fewstep in tests/export/test_export_roundtrip.py and test_export_pipeline_student.py.)"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import diffusers
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from typer.testing import CliRunner

from benchmarks.export_roundtrip import (
    PIPELINES as FIXTURES,
)
from benchmarks.export_roundtrip import (
    PROMPTS,
    Case,
    build_student,
    load_teacher,
    save_teacher,
)
from fewstep.app.cli import app
from fewstep.export.diffusers_export import (
    export_family,
    export_student,
)
from fewstep.export.student_pipeline import StudentPipeline
from fewstep.testing.pipeline_fixtures import fixtures

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "teachers"))
from teachers_helpers import diffusers_cfg
from test_custom_and_errors import custom_cfg

from fewstep.distill.trainer import Trainer

PIPELINES = {"sd": "StableDiffusionPipeline", "pixart": "PixArtSigmaPipeline",
             "flux": "FluxPipeline"}
NETWORKS = {"sd": ("unet", "UNet2DConditionModel"),
            "pixart": ("transformer", "PixArtTransformer2DModel"),
            "flux": ("transformer", "FluxTransformer2DModel")}


@pytest.fixture(scope="module")
def teachers(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("generic_teachers")


def _export(teachers: Path, out: Path, case: Case, components: str = "auto"):
    teacher = load_teacher(case.family, save_teacher(case.family, case.dtype, teachers),
                           case.dtype)
    st = build_student(teacher, case)
    export_student(st, out, teacher.config, teacher.pipeline, components, 0,
                   teacher.latent_shape, run={"method": "dmd2"})
    return teacher, st


@pytest.mark.parametrize("family", ["sd", "pixart", "flux"])
def test_decoupled_export_is_the_teachers_pipeline(teachers, tmp_path, family):

    _, st = _export(teachers, tmp_path / "e", Case(family, "decoupled", "bfloat16"))
    comp, cls_name = NETWORKS[family]
    pipe = diffusers.DiffusionPipeline.from_pretrained(tmp_path / "e", use_safetensors=True)
    assert type(pipe).__name__ == PIPELINES[family]
    # step 0 in the pipeline's own folder, step 1 beside it; float32 trainables kept
    step1 = getattr(diffusers, cls_name).from_pretrained(tmp_path / "e", subfolder=f"{comp}_step1",
                                                         use_safetensors=True)
    assert step1.dtype == torch.float32
    want = getattr(st.steps[1], comp)
    assert all(torch.equal(v, want.state_dict()[k]) for k, v in step1.state_dict().items())
    assert not torch.equal(getattr(pipe, comp).state_dict()[next(iter(want.state_dict()))],
                           next(iter(want.state_dict().values())))  # the steps differ
    (vae,) = (tmp_path / "e" / "vae").glob("*.safetensors")
    with safe_open(str(vae), framework="pt") as f:  # the teacher's bf16 VAE copied as is
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"BF16"}  # noqa: SIM118
    info = json.loads((tmp_path / "e" / "fewstep_student.json").read_text())
    assert info["family"] == "pipeline" and info["network_class"] == cls_name
    assert info["pipeline_class"] == PIPELINES[family] and info["component"] == comp
    assert info["step_subfolders"] == [comp, f"{comp}_step1"]
    assert info["dtypes"] == {"pipeline": "bfloat16", "denoiser": "float32"}
    card = (tmp_path / "e" / "README.md").read_text()
    # the card samples through the stock pipeline's own __call__ (StudentScheduler)
    assert PIPELINES[family] in card and "dmd2" in card and "pipe(prompt=" in card
    body = card.split("def few_step(")[1].split("\n\n\n")[0]
    assert len([ln for ln in body.splitlines()[1:] if ln.strip()]) <= 15
    assert "fewstep" not in card.split("```python")[1].split("```")[0].replace(
        "fewstep_student", "")


@pytest.mark.parametrize("family", ["sd", "flux"])
def test_lora_adapters_load_with_diffusers_loader(teachers, tmp_path, family):

    teacher, _ = _export(teachers, tmp_path / "e", Case(family, "lora", "float32"))
    comp, _ = NETWORKS[family]
    assert not (tmp_path / "e" / "model_index.json").exists()  # the base is referenced
    path = tmp_path / "e" / "step1" / "adapter.safetensors"
    with safe_open(str(path), framework="pt") as f:
        keys = list(f.keys())
        meta = json.loads(f.metadata()["lora_adapter_metadata"])
    assert keys and all(k.startswith(comp + ".") for k in keys)
    assert all(k.endswith((".lora_A.weight", ".lora_B.weight")) for k in keys)
    assert meta[f"{comp}.r"] == 4
    pipe = diffusers.DiffusionPipeline.from_pretrained(teacher.config["pretrained"],
                                                      use_safetensors=True)
    pipe.load_lora_weights(str(tmp_path / "e" / "step1"), weight_name="adapter.safetensors",
                           adapter_name="step1")
    net = getattr(pipe, comp)
    saved = load_file(str(path))
    params = dict(net.named_parameters())
    for k, t in saved.items():  # every saved tensor landed in the model
        name = k.split(".", 1)[1].replace(".weight", ".step1.weight")
        assert torch.equal(params[name].detach(), t), name


def test_lora_full_copies_the_base(teachers, tmp_path):

    _export(teachers, tmp_path / "e", Case("flux", "lora", "float32"), "full")
    info = json.loads((tmp_path / "e" / "fewstep_student.json").read_text())
    assert info["base"]["copied"] is True and info["base"]["source"] == "."
    pipe = diffusers.FluxPipeline.from_pretrained(tmp_path / "e", use_safetensors=True)
    assert type(pipe.transformer.transformer_blocks[0].attn.to_q).__name__ == "Linear"
    sp = StudentPipeline.from_pretrained(tmp_path / "e")
    res = fixtures()[FIXTURES["flux"]].resolution
    assert sp(PROMPTS[:1], seed=0).shape == (1, 3, res, res)


def test_export_family_of_teacher_configs():
    # any pipeline teacher (every family, read generically) exports through its pipeline
    assert export_family({"kind": "diffusers", "pipeline_class": "StableDiffusionPipeline"}) \
        == "pipeline"
    assert export_family({"kind": "zimage", "pipeline_class": "ZImagePipeline"}) == "pipeline"
    assert export_family({"kind": "unet_eps"}) == "unet_eps"
    assert export_family({"kind": "custom"}) is None  # fewstep's own format


@pytest.fixture(scope="module")
def stacks(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    import fewstep.testing as testing

    root = tmp_path_factory.mktemp("generic_stacks")
    testing.build_tiny_sd_pipeline(seed=0).save_pretrained(root / "sd")
    (root / "prompts.txt").write_text("\n".join(PROMPTS) + "\n")
    return {"sd": root / "sd", "prompts": root / "prompts.txt", "cache": root / "cache"}


def test_cli_export_and_sample_of_a_trained_sd_run(stacks, tmp_path):
    cfg = diffusers_cfg(stacks, "sd", 16, None, method="regression",
                        student={"num_steps": 2, "parameterization": "lora", "lora_rank": 2},
                        train={"iterations": 1, "batch_size": 2, "log_every": 1})
    tr = Trainer(cfg, tmp_path / "run", progress=False)
    tr.train()
    runner = CliRunner()
    r = runner.invoke(app, ["export", "--run", str(tmp_path / "run"), "--out",
                            str(tmp_path / "exp")])
    assert r.exit_code == 0, r.output
    info = json.loads((tmp_path / "exp" / "fewstep_student.json").read_text())
    assert info["teacher"]["kind"] == "diffusers" and info["scheduler"]["vp"] is True
    assert "regression" in (tmp_path / "exp" / "README.md").read_text()
    r = runner.invoke(app, ["sample", "--student", str(tmp_path / "exp"), "--prompt",
                            PROMPTS[0], "--num", "2", "--seed", "4", "--out",
                            str(tmp_path / "samples")])
    assert r.exit_code == 0, r.output
    got = load_file(str(tmp_path / "samples" / "samples.safetensors"))["images"]
    # the in-memory EMA student on the noise the export's sampler draws for seed 4
    x, eps = StudentPipeline.from_pretrained(tmp_path / "exp")._noises(
        2, torch.Generator().manual_seed(4))
    cond = tr.teacher.problem.cond_map(torch.tensor([0, 0]))  # PROMPTS[0] twice
    with torch.no_grad():
        x0 = tr.ema.generate(x, cond, step_noises=eps).sample
        want = tr.teacher.codec.decode(x0).float()
    assert torch.isfinite(got).all()
    assert (got - want).abs().max() <= 1e-5


def test_custom_kind_student_with_reference_is_one_line_error(tmp_path):
    cfg = custom_cfg(tmp_path, train={"iterations": 1, "batch_size": 4, "log_every": 1})
    Trainer(cfg, tmp_path / "run", progress=False).train()
    r = CliRunner().invoke(app, ["export", "--run", str(tmp_path / "run"), "--out",
                                 str(tmp_path / "exp"), "--components", "reference"])
    assert r.exit_code == 2, r.output
    msg = [ln for ln in r.output.splitlines() if ln.strip()]
    assert len(msg) == 1 and msg[0].count("--components") == 1 and "custom" in msg[0], r.output
    assert not (tmp_path / "exp").exists()  # nothing written, not even the folder
