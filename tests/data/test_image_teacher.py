"""Teachers that suit images: network choice by size, a short UNet teacher training on tiny
generated images that lowers the loss, its file loading through the ``file`` teacher kind, and
one Turbo++ iteration on it (decoupled and per-step LoRA with gradient checkpointing)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fewstep.distill.config import DistillConfig
from fewstep.distill.trainer import Trainer
from fewstep.networks.registry import CheckpointableDenoiser
from fewstep.networks.unet import UNet
from fewstep.teachers.training import (
    NetworkConfig,
    TeacherConfig,
    auto_network_type,
    load_denoiser,
    teacher_preset_for,
    train_teacher,
)
from fewstep.utils.config_files import validate


def _blobs(folder: Path, n: int = 24, size: int = 16) -> Path:
    """Two classes of simple images: a bright square top-left or bottom-right."""
    rng = np.random.default_rng(0)
    for c in ("tl", "br"):
        (folder / c).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            a = np.full((size, size, 3), 20, np.uint8)
            o = int(rng.integers(0, 3))
            if c == "tl":
                a[o:o + 8, o:o + 8] = rng.integers(150, 256, 3)
            else:
                a[size - 8 - o:size - o, size - 8 - o:size - o] = rng.integers(150, 256, 3)
            Image.fromarray(a).save(folder / c / f"{i:03d}.png")
    return folder


@pytest.fixture(scope="module")
def unet_teacher(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict]:
    tmp = tmp_path_factory.mktemp("unet_teacher")
    data = _blobs(tmp / "blobs")
    cfg = TeacherConfig(data=str(data), network=NetworkConfig(type="auto", channels=[8, 16],
                                                              norm_groups=4),
                        steps=60, batch_size=16, lr=3e-3, warmup=5, ema_decay=0.9,
                        ema_warmup=True, grids=2)
    torch.manual_seed(0)
    first, _ = train_teacher(TeacherConfig(**{**cfg.model_dump(), "steps": 1}), None,
                             progress=False)
    trained, info = train_teacher(cfg, tmp / "teacher.safetensors", progress=False)
    info["first_loss"] = _fm_loss(first, data)
    info["trained_loss"] = _fm_loss(trained, data)
    return data, tmp / "teacher.safetensors", info


@torch.no_grad()
def _fm_loss(den: torch.nn.Module, data: Path) -> float:
    """Flow-matching velocity loss on a fixed batch of held-out + train images."""
    from fewstep.data.problem import get_problem

    x0, y = get_problem(str(data)).split("all")
    g = torch.Generator().manual_seed(1)
    eps = torch.randn(x0.shape, generator=g)
    sigma = torch.linspace(0.05, 0.95, len(x0))
    xs = (1 - sigma)[:, None, None, None] * x0 + sigma[:, None, None, None] * eps
    return float((den.net(xs, sigma, y) - (eps - x0)).pow(2).mean())


def test_network_choice_by_size() -> None:
    assert auto_network_type((1, 8, 8)) == "resmlp"
    assert auto_network_type((2,)) == "resmlp"
    assert auto_network_type((3, 16, 16)) == "unet"
    assert teacher_preset_for((1, 8, 8)) == "teacher_8px"
    assert teacher_preset_for((3, 16, 16)) == "teacher_16px"
    assert teacher_preset_for((3, 32, 32)) == "teacher_32px"
    assert teacher_preset_for((3, 48, 48)) == "teacher_64px"


def test_unet_teacher_trains_and_loads(unet_teacher: tuple[Path, Path, dict]) -> None:
    data, path, info = unet_teacher
    assert info["network"] == "unet" and info["steps"] == 60
    # the EMA teacher's flow-matching loss on a fixed batch is clearly below the one after
    # a single step (zero-initialised output: the loss of predicting 0)
    assert info["trained_loss"] < 0.7 * info["first_loss"], info
    den, cfg = load_denoiser(path)
    assert isinstance(den, CheckpointableDenoiser) and isinstance(den.net, UNet)
    assert cfg["data"] == str(data.resolve()) and cfg["null_class"] == 2
    assert cfg["data_info"]["class_names"] == ["br", "tl"]
    grids = sorted((path.parent / "teacher_samples").glob("*.png"))
    assert "final.png" in [g.name for g in grids] and len(grids) >= 3
    x = torch.randn(4, 3, 16, 16)
    out = den(x, torch.full((4,), 0.5), torch.tensor([0, 1, 2, 2]))
    assert out.shape == x.shape and torch.isfinite(out).all()


def test_unet_features_carry_gradients(unet_teacher: tuple[Path, Path, dict]) -> None:
    den, _ = load_denoiser(unet_teacher[1])
    x = torch.randn(2, 3, 16, 16, requires_grad=True)
    feats = den.features(x, torch.full((2,), 0.3), torch.tensor([0, 1]))
    assert len(feats) == 3 and all(f.ndim == 3 for f in feats)
    sum(f.sum() for f in feats).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


@pytest.mark.parametrize("student", [{"parameterization": "decoupled"},
                                     {"parameterization": "lora", "lora_rank": 4}])
def test_turbo_pp_iteration_on_unet_teacher(unet_teacher: tuple[Path, Path, dict],
                                            tmp_path: Path, student: dict) -> None:
    data, path, _ = unet_teacher
    cfg = validate(DistillConfig, {
        "method": "turbo_pp", "data": str(data), "teacher": {"path": str(path)},
        "student": {"num_steps": 2, **student},
        "gan": {"weight": 0.5, "layers": [-1, -2]}, "dm": {"weight": 1.0},
        "turbo": {"regression_weight": 1.0},
        "cache": {"dir": str(tmp_path / "cache"), "size": 16, "shard_size": 16,
                  "batch_size": 16},
        "train": {"iterations": 1, "batch_size": 4, "gradient_checkpointing": True}})
    tr = Trainer(cfg, tmp_path / "run", progress=False)
    before = [p.detach().clone() for p in tr.student.parameters() if p.requires_grad]
    st = tr.train()
    after = [p.detach() for p in tr.student.parameters() if p.requires_grad]
    assert tr.step == 1 and (tmp_path / "run" / "student.safetensors").is_file()
    assert any(not torch.equal(a, b) for a, b in zip(before, after, strict=True))
    y = st.generate(torch.randn(3, 3, 16, 16), torch.tensor([0, 1, 0])).sample
    assert y.shape == (3, 3, 16, 16) and torch.isfinite(y).all()
