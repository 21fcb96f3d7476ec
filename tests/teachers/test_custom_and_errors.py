"""``teacher.kind: custom`` (a user network through a builder) and bad teacher input: one line
naming the field, ``ConfigError`` (exit code 2 on the command line)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from teachers_helpers import FAMILY_SPECS, diffusers_cfg

from fewstep.distill.config import DistillConfig, load_run_teacher
from fewstep.distill.trainer import Trainer
from fewstep.errors import ConfigError
from fewstep.student.student_file import load_student_file
from fewstep.teachers import teacher_kinds
from fewstep.utils.config_files import validate


def custom_cfg(tmp_path: Path, builder: str = "teachers_helpers:build", **sections: object
               ) -> DistillConfig:
    return validate(DistillConfig, {
        "method": "turbo_pp", "data": "digits",
        "teacher": {"kind": "custom", "builder": builder, "steps": 4},
        "student": {"num_steps": 2}, "gan": {"weight": 0.5, "discriminator": "standalone"},
        "cache": {"dir": str(tmp_path / "cache"), "size": 8, "shard_size": 8, "batch_size": 8},
        "train": {"iterations": 2, "batch_size": 4, "log_every": 1},
        "eval": {"num_samples": 10}, **sections})


def test_registry_lists_every_kind():
    assert set(teacher_kinds()) >= {"file", "diffusers", "zimage", "unet_eps", "custom"}
    with pytest.raises(ConfigError, match=r"teacher\.kind: .*unknown teacher kind 'nope'"):
        validate(DistillConfig, {"teacher": {"kind": "nope"}})


def test_custom_network_teacher_trains_and_reloads(tmp_path):
    tr = Trainer(custom_cfg(tmp_path), tmp_path / "run", progress=False)
    assert tr.teacher.problem.data_shape == (1, 8, 8) and tr.teacher.problem.num_classes == 10
    labels = torch.tensor([3, 4])
    assert torch.equal(tr.teacher.denoiser.null_cond(labels), torch.tensor([10, 10]))
    tr.train()
    path = tmp_path / "run" / "student.safetensors"
    # the file records the builder; reloading calls it only when the run's config names it
    assert tr.teacher.config["builder"][1] == {"builder": "teachers_helpers:build"}
    student, _ = load_student_file(path, allow_builders=["teachers_helpers:build"])
    x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        got = student.generate(x, labels, generator=torch.Generator().manual_seed(1)).sample
        want = tr.ema.generate(x, labels, generator=torch.Generator().manual_seed(1)).sample
    torch.testing.assert_close(got, want)


def test_custom_builder_not_named_by_the_config_is_refused(tmp_path):
    from fewstep.teachers import custom

    tr = Trainer(custom_cfg(tmp_path, train={"iterations": 1, "batch_size": 4}),
                 tmp_path / "run", progress=False)
    tr.train()
    custom._ALLOWED.clear()  # a fresh process that never saw the run's config
    with pytest.raises(ConfigError, match=r"teacher\.builder: .*not named by the run's config"):
        load_student_file(tmp_path / "run" / "student.safetensors")


def test_sample_and_eval_take_a_custom_teachers_student_with_allow_builder(tmp_path):
    from typer.testing import CliRunner

    from fewstep.app.cli import app
    from fewstep.evaluation.evaluate import eval_noise, parse_sampler, run_sampler
    from fewstep.teachers import custom
    from fewstep.utils.files import load_tensors

    tr = Trainer(custom_cfg(tmp_path, train={"iterations": 1, "batch_size": 4}),
                 tmp_path / "run", progress=False)
    tr.train()
    custom._ALLOWED.clear()  # a fresh process that never saw the run's config
    path = str(tmp_path / "run" / "student.safetensors")
    args = ["sample", "--student", path, "--out", str(tmp_path / "s"), "--num", "20",
            "--samplers", "teacher_4,student_2"]
    refused = CliRunner().invoke(app, args)
    lines = [ln for ln in refused.output.splitlines() if ln.strip()]
    assert refused.exit_code == 2 and len(lines) == 1, refused.output
    assert "--allow-builder teachers_helpers:build" in lines[0]
    ok = CliRunner().invoke(app, [*args, "--allow-builder", "teachers_helpers:build"])
    assert ok.exit_code == 0, ok.output
    got, _ = load_tensors(tmp_path / "s" / "samples.safetensors")
    noise, cond = eval_noise(tr.teacher.problem, 20, 0)
    for name, student in (("student_2", tr.ema), ("teacher_4", None)):
        want = run_sampler(parse_sampler(name), noise, cond, tr.teacher.denoiser,
                           student=student)[0]
        assert torch.equal(got[name], want), name
    ev = CliRunner().invoke(app, ["eval", "--student", path, "--num", "20", "--samplers",
                                  "student_2", "--timing-repeats", "1", "--allow-builder",
                                  "teachers_helpers:build"])
    assert ev.exit_code == 0, ev.output
    assert json.loads(ev.output[ev.output.index("{"):])["student_2"]["nfe"] == 2


@pytest.mark.parametrize(("builder", "message"), [
    ("no_such_module_xyz:build", r"teacher\.builder: cannot import 'no_such_module_xyz:build'"),
    ("teachers_helpers:no_such_function", r"teacher\.builder: cannot import"),
    ("teachers_helpers:build_wrong_type", r"teacher\.builder: .* returned TinyNet, not a "
                                          r"fewstep\.teachers\.CustomTeacher"),
])
def test_bad_builders(tmp_path, builder, message):
    with pytest.raises(ConfigError, match=message):
        load_run_teacher(custom_cfg(tmp_path, builder), "cpu")


def test_bad_builder_on_the_command_line_is_one_line_exit_2(tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text("method: regression\ndata: digits\nteacher:\n  kind: custom\n"
                   "  builder: no_such_module_xyz:build\n")
    r = subprocess.run([sys.executable, "-m", "fewstep", "distill", "--config", str(cfg),
                        "--out", str(tmp_path / "out")], capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr
    assert "teacher.builder: cannot import 'no_such_module_xyz:build'" in r.stderr


def _index(folder: Path, cls: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model_index.json").write_text(json.dumps(
        {"_class_name": cls, "_diffusers_version": "0.42.1"}))


@pytest.mark.parametrize(("cls", "message"), [
    # a prior (its "denoiser" makes image embeddings, not images)
    ("StableCascadePriorPipeline", r"StableCascadePriorPipeline is not supported \(cascaded: "
                                   r"Stable Cascade stage C: outputs image embeddings\)"),
    # a UNet2DModel pipeline: no prompt at all
    ("DDPMPipeline", r"DDPMPipeline is not supported \(unconditional: "),
])
def test_unsupported_pipelines(saved_pipelines, tmp_path, cls, message):
    _index(tmp_path / "pipe", cls)
    _, res, seq = FAMILY_SPECS["pixart"]
    stacks = {**saved_pipelines, "pixart": tmp_path / "pipe"}
    with pytest.raises(ConfigError, match=r"^teacher\.pretrained: " + message) as e:
        load_run_teacher(diffusers_cfg(stacks, "pixart", res, seq), "cpu")
    assert "\n" not in str(e.value)


def test_pipeline_without_its_vae_folder_is_refused(saved_pipelines, tmp_path):
    folder = tmp_path / "pixart_novae"
    shutil.copytree(saved_pipelines["pixart"], folder)
    shutil.rmtree(folder / "vae")
    _, res, seq = FAMILY_SPECS["pixart"]
    with pytest.raises(ConfigError, match=r"^teacher\.pretrained: .*pixart_novae lacks the "
                                          r"component 'vae' \(AutoencoderKL\) that "
                                          r"model_index\.json lists: no folder vae/$") as e:
        load_run_teacher(diffusers_cfg({**saved_pipelines, "pixart": folder}, "pixart", res,
                                       seq), "cpu")
    assert "\n" not in str(e.value)


def test_pickle_only_folder_is_refused_with_how_to_convert(saved_pipelines, tmp_path):
    folder = tmp_path / "sd_bin"
    shutil.copytree(saved_pipelines["sd"], folder)
    for f in (folder / "unet").glob("*.safetensors"):
        f.unlink()
    (folder / "unet" / "diffusion_pytorch_model.bin").write_bytes(b"not read")
    _, res, seq = FAMILY_SPECS["sd"]
    with pytest.raises(ConfigError, match=r"teacher\.pretrained: .*diffusion_pytorch_model\.bin "
                                          r"is a pickled weight file.*safe_serialization=True"):
        load_run_teacher(diffusers_cfg({**saved_pipelines, "sd": folder}, "sd", res, seq), "cpu")


def test_zimage_kind_refuses_other_families(saved_pipelines):
    _, res, seq = FAMILY_SPECS["sd"]
    cfg = diffusers_cfg(saved_pipelines, "sd", res, seq, teacher={"kind": "zimage"})
    with pytest.raises(ConfigError, match=r"teacher\.kind: this kind needs a ZImagePipeline "
                                          r"but .* holds a StableDiffusionPipeline; use "
                                          r"teacher\.kind diffusers"):
        load_run_teacher(cfg, "cpu")


def test_clip_sample_scheduler_warns(saved_pipelines, tmp_path, caplog):
    """PixArt keeps a scheduler's clip_sample (StableDiffusionPipeline resets it to False)."""
    from diffusers import DDIMScheduler

    folder = tmp_path / "pixart_clip"
    shutil.copytree(saved_pipelines["pixart"], folder)
    sched = DDIMScheduler.from_pretrained(folder, subfolder="scheduler")
    DDIMScheduler.from_config({**sched.config, "clip_sample": True}).save_pretrained(
        folder / "scheduler")
    _, res, seq = FAMILY_SPECS["pixart"]
    with caplog.at_level("WARNING"):
        load_run_teacher(diffusers_cfg({**saved_pipelines, "pixart": folder}, "pixart", res, seq),
                     "cpu")
    assert any("clip_sample=True" in r.getMessage() for r in caplog.records)
