"""Diffusers teachers through the Trainer: every recipe on the tiny Z-Image stack and the tiny
eps-UNet, export -> reload -> identical images, per-step LoRA at the Student level, and the
prompt-embedding cache reused across runs. All offline, CPU, tiny models."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from fewstep.app.run_distill import load_distill_config
from fewstep.distill.config import DistillConfig, drop_foreign_sections
from fewstep.distill.trainer import Trainer
from fewstep.errors import ConfigError
from fewstep.presets import preset_path
from fewstep.testing.tiny_pipelines import TINY_MAX_SEQ
from fewstep.utils.config_files import validate

METHODS = ["turbo_pp", "regression", "dmd2", "sid", "imagine_flash"]
PROMPTS = "a red cat\na photo of a big blue dog\nthe green tree\n"


@pytest.fixture(scope="module")
def stacks(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Saved tiny teachers: a ZImagePipeline folder and a DDPM UNet folder, plus prompts."""
    from diffusers import DDPMScheduler, UNet2DModel

    from fewstep.testing import build_tiny_zimage_pipeline, tiny_unet_config

    root = tmp_path_factory.mktemp("real_teachers")
    build_tiny_zimage_pipeline(seed=0).save_pretrained(root / "zimage")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        UNet2DModel(**tiny_unet_config(8, 1, num_class_embeds=11)).save_pretrained(
            root / "unet" / "unet")
    DDPMScheduler(num_train_timesteps=1000).save_pretrained(root / "unet" / "scheduler")
    (root / "prompts.txt").write_text(PROMPTS)
    return {"root": root, "zimage": root / "zimage", "unet": root / "unet",
            "prompts": root / "prompts.txt", "cache": root / "cache"}


def zimage_cfg(stacks: dict[str, Path], *overrides: str, cache: Path | None = None
               ) -> DistillConfig:
    """The shipped ``tiny_zimage`` preset pointed at the test's folders."""
    return load_distill_config(preset_path("tiny_zimage"), [
        f"teacher.pretrained={stacks['zimage']}", f"teacher.prompts={stacks['prompts']}",
        f"cache.dir={cache or stacks['cache']}", f"teacher.max_sequence_length={TINY_MAX_SEQ}",
        *overrides])


def unet_cfg(stacks: dict[str, Path], method: str, **train: object) -> DistillConfig:
    return validate(DistillConfig, drop_foreign_sections({
        "method": method, "data": "digits",
        "teacher": {"kind": "unet_eps", "pretrained": str(stacks["unet"]), "steps": 4},
        "student": {"num_steps": 2, "parameterization": "decoupled"},
        "gan": {"weight": 0.5, "layers": [-1]}, "sid": {"gan_weight": 0.5},
        "cache": {"dir": str(stacks["cache"]), "size": 4, "shard_size": 4, "batch_size": 4},
        "train": {"iterations": 1, "batch_size": 2, "gradient_checkpointing": True,
                  "log_every": 1, **train}}))


def _check_history(tr: Trainer) -> None:
    assert len(tr.losses.history) == tr.cfg.train.iterations
    for rec in tr.losses.history:
        assert all(math.isfinite(v) for v in rec.values()), rec
    assert (tr.run_dir / "student.safetensors").is_file()


@pytest.mark.parametrize("method", METHODS)
def test_every_recipe_trains_on_tiny_zimage(stacks, tmp_path, method):
    extra = {"dmd2": ["gan.weight=0.5"], "sid": ["sid.gan_weight=0.5"]}.get(method, [])
    tr = Trainer(zimage_cfg(stacks, f"method={method}", *extra), tmp_path / method,
                 progress=False)
    assert tr.teacher.problem.data_shape == (16, 8, 8) and tr.teacher.problem.num_classes == 0
    base = tr.student.lora.base
    assert base.transformer.gradient_checkpointing  # with the LoRA-aware checkpoint_fn
    assert base.transformer._gradient_checkpointing_func == tr.student.lora.checkpoint_fn
    den = tr.teacher.denoiser
    assert not any(p.requires_grad for p in den.parameters()) and not den.training
    tr.train()
    _check_history(tr)
    assert (tr.run_dir / "samples" / "final.png").is_file()  # decoded through the VAE


@pytest.mark.parametrize("method", METHODS)
def test_every_recipe_trains_on_tiny_eps_unet(stacks, tmp_path, method):
    tr = Trainer(unet_cfg(stacks, method), tmp_path / method, progress=False)
    assert tr.teacher.problem.data_shape == (1, 8, 8) and tr.teacher.denoiser.null_class == 10
    assert tr.student.steps[0].unet.is_gradient_checkpointing
    tr.train()
    _check_history(tr)


@pytest.fixture(scope="module")
def zimage_run(stacks, tmp_path_factory):
    """A finished 2-iteration Turbo++ run on the tiny Z-Image stack (bf16 autocast)."""
    tr = Trainer(zimage_cfg(stacks, "train.iterations=2"),
                 tmp_path_factory.mktemp("zrun") / "run", progress=False)
    tr.train()
    return tr


@pytest.mark.parametrize("components", ["copy", "reference"])
def test_export_reload_same_images(zimage_run, tmp_path, components):
    from fewstep.export.run import export_run
    from fewstep.export.student_pipeline import StudentPipeline

    tr = zimage_run
    # the training moved the LoRA weights away from the base: the export must carry them
    assert any(p.abs().sum() > 0 for p in tr.ema.lora.step_parameters(1))
    out = export_run(tr.run_dir, tmp_path / "student", components=components)
    assert (out / "step1" / "adapter.safetensors").is_file()
    assert (out / "vae").is_dir() == (components == "copy")
    pipe = StudentPipeline.from_pretrained(out)
    got = pipe("a red cat", num_images_per_prompt=2, seed=3)

    # the in-memory EMA student on the training conditioning of "a red cat" (the run's prompt
    # cache), from the noise the export draws for seed 3, decoded by the teacher's codec
    i = PROMPTS.splitlines().index("a red cat")
    x, eps = pipe._noises(2, torch.Generator().manual_seed(3))
    with torch.no_grad():
        cond = tr.teacher.problem.cond_map(torch.tensor([i, i]))
        x0 = tr.ema.generate(x, cond, step_noises=eps).sample
        want = tr.teacher.codec.decode(x0).float()
    assert got.shape == (2, 3, 16, 16)
    assert float((got - want).abs().max()) <= 1e-5


def test_cli_export_and_sample(zimage_run, tmp_path):
    from typer.testing import CliRunner

    from fewstep.app.cli import app

    runner = CliRunner()
    r = runner.invoke(app, ["export", "--run", str(zimage_run.run_dir), "--out",
                            str(tmp_path / "exp")])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["sample", "--student", str(tmp_path / "exp"), "--prompt",
                            "a red cat", "--prompt", "the green tree", "--num", "2", "--out",
                            str(tmp_path / "s")])
    assert r.exit_code == 0, r.output
    from fewstep.utils.files import load_tensors

    images, _ = load_tensors(tmp_path / "s" / "samples.safetensors", kind="samples")
    assert images["images"].shape == (4, 3, 16, 16)
    assert (tmp_path / "s" / "grid.png").is_file()


def test_export_reload_eps_unet(stacks, tmp_path):
    from fewstep.export.run import export_run
    from fewstep.export.student_pipeline import StudentPipeline

    tr = Trainer(unet_cfg(stacks, "regression"), tmp_path / "run", progress=False)
    tr.train()
    pipe = StudentPipeline.from_pretrained(export_run(tr.run_dir, tmp_path / "exp"))
    got = pipe(num_images=4, seed=5)
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        noise = torch.randn((4, 1, 8, 8), generator=g)
        want = tr.ema.generate(noise, torch.arange(4) % 10, generator=g).sample
    assert torch.equal(got, want)


def test_student_lora_steps_disjoint_with_zimage_defaults(zden, prompt_cond):
    from fewstep.student.student import Student
    from fewstep.teachers.diffusers.zimage import ZIMAGE_LORA_TARGETS

    st = Student(zden, torch.tensor([1.0, 0.75]), "lora", lora_rank=2)
    assert all(any(t == p or t.endswith("." + p) for p in ZIMAGE_LORA_TARGETS)
               for t in st.lora.targets)
    assert any(t.endswith("to_q") for t in st.lora.targets)
    p0, p1 = list(st.step_parameters(0)), list(st.step_parameters(1))
    assert p0 and p1 and not {id(p) for p in p0} & {id(p) for p in p1}
    with torch.no_grad():
        for p in p0 + p1:
            p.normal_(0, 0.05)  # lora_B = 0 at init would give lora_A no gradient
    noise = torch.randn(2, 16, 8, 8, generator=torch.Generator().manual_seed(0))
    out = st.generate(noise, prompt_cond, generator=torch.Generator().manual_seed(1)).sample
    out.square().mean().backward()  # end-to-end: both steps' adapters get gradients
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in p0 + p1)
    assert all(p.grad is None for p in st.lora.base_parameters())


def test_prompt_cache_reused_across_runs(stacks, tmp_path):
    cache = tmp_path / "cache"
    first = Trainer(zimage_cfg(stacks, cache=cache), tmp_path / "a", progress=False)
    assert first.teacher.problem.prompts.captured  # captured once
    second = Trainer(zimage_cfg(stacks, cache=cache), tmp_path / "b", progress=False)
    assert second.teacher.problem.prompts.captured == []  # second run captures nothing
    ids = torch.tensor([2, 0])
    a, b = first.teacher.problem.cond_map(ids), second.teacher.problem.cond_map(ids)
    assert a.leaves.keys() == b.leaves.keys()
    for k, v in a.leaves.items():
        u = b.leaves[k]
        if isinstance(v, list) and v and torch.is_tensor(v[0]):  # rows of different lengths
            assert len(v) == len(u) and all(torch.equal(x, y) for x, y in zip(v, u, strict=True))
        else:
            assert torch.equal(v, u) if torch.is_tensor(v) else v == u


@pytest.mark.parametrize(("overrides", "message"), [
    (["teacher.resolution=18"], r"teacher\.resolution: .*divisible by 4 \(got 18\)"),
    (["teacher.prompts=/nonexistent/prompts.txt"], r"teacher\.prompts: prompt file not found"),
])
def test_zimage_errors_name_the_field(stacks, tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message):
        Trainer(zimage_cfg(stacks, *overrides), tmp_path / "run", progress=False)


@pytest.mark.parametrize(("data", "message"), [
    ({"data": "digits"}, r"data: must be 'prompts' when teacher\.prompts is set"),
    ({"gan": {"real": "dataset"}}, r"gan\.real: 'dataset' is not available"),
    ({"teacher": {"resolution": None}}, r"teacher\.resolution: required"),
    ({"teacher": {"pretrained": "not a hub id!"}}, r"teacher\.pretrained: .*hub id"),
])
def test_zimage_config_validation(stacks, data, message):
    base = {"method": "turbo_pp", "data": "prompts",
            "teacher": {"kind": "zimage", "pretrained": str(stacks["zimage"]),
                        "prompts": str(stacks["prompts"]), "resolution": 16}}
    for k, v in data.items():
        base[k] = {**base[k], **v} if isinstance(v, dict) and k in base else v
    with pytest.raises(ConfigError, match=message):
        validate(DistillConfig, base)
