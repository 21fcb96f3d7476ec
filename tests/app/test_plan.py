"""``fewstep plan``: meta-device counts equal the real models'; the memory table is sane."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from fewstep.app.cli import app
from fewstep.app.plan import build_plan
from fewstep.app.plan_models import meta_models
from fewstep.distill.config import DistillConfig
from fewstep.errors import ConfigError
from fewstep.utils.config_files import validate


def _count(m: torch.nn.Module) -> tuple[int, int]:
    return (sum(p.numel() for p in m.parameters()),
            sum(p.numel() for p in m.parameters() if p.requires_grad))


@pytest.mark.parametrize(("method", "param", "extra"), [
    ("turbo_pp", "decoupled", {"gan": {"weight": 0.5}, "dm": {"weight": 1.0}}),
    ("dmd2", "shared", {"gan": {"weight": 0.5}}),
    ("turbo_pp", "lora", {"student": {"lora_rank": 4}}),
])
def test_meta_counts_equal_real_models(toy_teacher_path: Path, tmp_path: Path, method: str,
                                       param: str, extra: dict) -> None:
    from fewstep.distill.trainer import Trainer

    data = {"method": method, "data": "checkerboard",
            "teacher": {"path": str(toy_teacher_path)},
            "student": {"num_steps": 2, "parameterization": param, **extra.pop("student", {})},
            "cache": {"dir": str(tmp_path / "cache")}, **extra}
    cfg = validate(DistillConfig, data)
    meta = meta_models(cfg)[0]
    assert all(p.is_meta for m in meta.values() for p in m.parameters())
    real = Trainer(cfg, tmp_path / "run", progress=False)
    assert _count(meta["teacher"])[0] == _count(real.teacher.denoiser)[0]
    assert _count(meta["student"]) == _count(real.student)
    assert _count(meta["method"]) == _count(real.method)
    plan = build_plan(cfg, 1)
    got = {m.name: (m.total, m.trainable) for m in plan.models}
    assert got["student"] == _count(real.student)
    # the EMA copies what the student owns: not a base shared with the teacher
    ema = getattr(real.ema, "model", real.ema)
    teacher_ids = {id(p) for p in real.teacher.denoiser.parameters()}
    assert got["ema"][0] == sum(p.numel() for p in ema.parameters() if id(p) not in teacher_ids)
    if param == "lora":
        assert real.student.lora is not None
        adapters = sum(p.numel() for k in range(2) for p in real.student.lora.step_parameters(k))
        assert got["student"][1] == adapters > 0


def _tiny_zimage_folder(tmp: Path) -> Path:
    from fewstep.testing import build_tiny_zimage_pipeline

    pipe = build_tiny_zimage_pipeline()
    pipe.save_config(tmp / "zi")  # model_index.json
    pipe.transformer.save_config(tmp / "zi" / "transformer")  # configs only, no weights
    pipe.vae.save_config(tmp / "zi" / "vae")
    (tmp / "prompts.txt").write_text("a red car\na photo of a cat\n")
    return tmp / "zi"


def test_zimage_plan_from_configs_only(tmp_path: Path) -> None:
    from fewstep.student.lora import PerStepLoRA
    from fewstep.teachers.diffusers.zimage import ZIMAGE_LORA_TARGETS
    from fewstep.testing import TINY_TRANSFORMER_CONFIG

    folder = _tiny_zimage_folder(tmp_path)
    assert not list(folder.rglob("*.safetensors"))
    cfg = validate(DistillConfig, {
        "method": "turbo_pp", "data": "prompts",
        "teacher": {"kind": "zimage", "pretrained": str(folder), "resolution": 32,
                    "prompts": str(tmp_path / "prompts.txt")},
        "student": {"parameterization": "lora", "lora_rank": 4},
        "gan": {"layers": [-1, -2]},  # the tiny transformer has 2 feature maps
        "train": {"batch_size": 8, "distributed": "fsdp"}})
    plan = build_plan(cfg, 4, gpu_memory_gb=16)
    counts = {m.name: (m.total, m.trainable) for m in plan.models}
    from diffusers import ZImageTransformer2DModel

    real = ZImageTransformer2DModel(**TINY_TRANSFORMER_CONFIG)
    assert counts["teacher"][0] == _count(real)[0]
    lora = PerStepLoRA(real, num_steps=2, rank=4, target_modules=ZIMAGE_LORA_TARGETS)
    adapters = sum(p.numel() for k in range(2) for p in lora.step_parameters(k))
    assert counts["student"] == (_count(lora)[0], adapters)
    assert plan.per_gpu_batch == 2
    # FSDP per-GPU estimate below the replicated one (same LoRA / checkpointing setting)
    rows = {(r.fsdp, r.lora, r.grad_ckpt): r for r in plan.rows}
    for lo in (False, True):
        for gc in (False, True):
            assert rows[(True, lo, gc)].total < rows[(False, lo, gc)].total
            assert rows[(False, lo, True)].activations < rows[(False, lo, False)].activations
    assert rows[(False, True, False)].total < rows[(False, False, False)].total  # LoRA saves
    assert all(r.supported for r in plan.rows)  # fsdp shards LoRA students too


def test_plan_cli_json_and_table(tmp_path: Path) -> None:
    folder = _tiny_zimage_folder(tmp_path)
    args = ["plan", "teacher.kind=zimage", f"teacher.pretrained={folder}",
            f"teacher.prompts={tmp_path / 'prompts.txt'}", "teacher.resolution=32",
            "data=prompts", "train.batch_size=8", "gan.layers=[-1,-2]", "--gpus", "4"]
    res = CliRunner().invoke(app, [*args, "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert out["gpus"] == 4 and len(out["rows"]) == 8
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0 and "rough estimate" in res.output and "teacher" in res.output
    odd = CliRunner().invoke(app, [*args[:-1], "3"])  # 8 not divisible by 3: says what to set
    assert odd.exit_code == 0 and "set train.batch_size=9" in odd.output


def test_preset_plan_offline_with_shipped_configs(monkeypatch: pytest.MonkeyPatch) -> None:
    """The shipped Z-Image preset plans offline from the shipped public configs, at the real
    sizes, and a global batch that does not split over the GPUs gets a suggestion."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    res = CliRunner().invoke(app, ["plan", "--preset", "zimage_turbo_2step", "--gpus", "8",
                                   "--gpu-memory-gb", "80", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    counts = {m["name"]: m["total"] for m in out["models"]}
    assert 6.0e9 < counts["teacher"] < 6.3e9  # the 6.15 B transformer
    assert 3.9e9 < counts["text_encoder"] < 4.1e9 and 8e7 < counts["vae"] < 9e7
    assert out["per_gpu_batch"] == 1 and out["global_batch"] == 8
    assert any("set train.batch_size=8" in n for n in out["notes"])
    # eps, sample, mid (float32) + a condition id per entry
    assert out["host"]["teacher_cache_disk"] == 2048 * (3 * 16 * 128 * 128 * 4 + 8)
    mine = [r for r in out["rows"] if r["configured"]]
    assert len(mine) == 1 and mine[0]["lora"] and mine[0]["data"] > 0


def test_unknown_hub_id_offline_names_the_field(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    res = CliRunner().invoke(app, ["plan", "--preset", "zimage_turbo_2step",
                                   "teacher.pretrained=someone/not-shipped"])
    assert res.exit_code == 2 and "teacher.pretrained" in res.output
    assert "Tongyi-MAI/Z-Image-Turbo" in res.output  # lists what ships


def test_every_method_declares_its_graph_forwards():
    from fewstep.app.plan import graph_forwards
    from fewstep.distill.methods import config_class, method_names

    for m in method_names():
        cfg = validate(DistillConfig, {"method": m})
        assert isinstance(cfg, config_class(m))
        n = graph_forwards(cfg)
        assert isinstance(n, int) and n >= 1, m
    cfg = validate(DistillConfig, {"method": "turbo_pp", "student": {"num_steps": 2},
                                   "step1": {"loss": "adversarial"}})
    assert graph_forwards(cfg) == 2 + 1 + 1  # unroll, teacher features, step-1 D pass
    with pytest.raises(ConfigError, match="method: unknown method"):
        graph_forwards(cfg.model_copy(update={"method": "nope"}))
