"""One training iteration of every recipe on each tiny ``teacher.kind: diffusers`` family
(Z-Image runs the same way through ``kind: zimage`` in tests/teachers/diffusers)."""

from __future__ import annotations

import math

import pytest
import torch
from teachers_helpers import FAMILY_SPECS, diffusers_cfg

from fewstep.distill.trainer import Trainer
from fewstep.errors import ConfigError
from fewstep.student.student_file import load_student_file

METHODS = ["turbo_pp", "regression", "dmd2", "sid", "imagine_flash"]


@pytest.mark.parametrize("family", ["sd", "pixart", "flux"])
@pytest.mark.parametrize("method", METHODS)
def test_every_recipe_one_iteration(saved_pipelines, tmp_path, family, method):
    _, res, max_seq = FAMILY_SPECS[family]
    cfg = diffusers_cfg(
        saved_pipelines, family, res, max_seq, method=method,
        student={"num_steps": 2, "parameterization": "lora", "lora_rank": 2,
                 "transition": "fresh"},
        gan={"weight": 0.5, "layers": [-1], "head_hidden": 16},
        sid={"gan_weight": 0.5}, eval={"num_samples": 10, "seed": 0},
        train={"iterations": 1, "batch_size": 2, "gradient_checkpointing": True,
               "log_every": 1})
    tr = Trainer(cfg, tmp_path / "run", progress=False)
    assert not any(p.requires_grad for p in tr.teacher.denoiser.parameters())
    tr.train()
    assert len(tr.losses.history) == 1
    assert all(math.isfinite(v) for v in tr.losses.history[0].values()), tr.losses.history[0]
    # the saved LoRA student holds only its adapters: it loads on its teacher (a randomly
    # initialised base from the recorded builder is refused) and gives the same images
    path = tmp_path / "run" / "student.safetensors"
    with pytest.raises(ConfigError, match="is rebuilt on its teacher"):
        load_student_file(path)
    student, _ = load_student_file(path, like=tr.teacher.denoiser)
    x = torch.randn(1, *tr.teacher.problem.data_shape, generator=torch.Generator().manual_seed(0))
    cond = tr.teacher.problem.cond_map(torch.tensor([0]))
    with torch.no_grad():
        got = student.generate(x, cond, generator=torch.Generator().manual_seed(1)).sample
        want = tr.ema.generate(x, cond, generator=torch.Generator().manual_seed(1)).sample
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, want)
