"""``fewstep plan`` on any diffusers family: the registry's meta teacher has the loaded
teacher's parameters and feature widths, from configs only."""

from __future__ import annotations

import pytest
import torch
from teachers_helpers import FAMILY_SPECS, diffusers_cfg

from fewstep.app.plan import build_plan
from fewstep.distill.config import load_run_teacher, meta_run_teacher


@pytest.mark.parametrize("family", ["sd", "pixart", "flux"])
def test_meta_teacher_matches_loaded(saved_pipelines, family):
    _, res, seq = FAMILY_SPECS[family]
    cfg = diffusers_cfg(saved_pipelines, family, res, seq,
                        student={"parameterization": "lora", "lora_rank": 2},
                        gan={"layers": [-1]})
    meta = meta_run_teacher(cfg)
    loaded = load_run_teacher(cfg, "cpu")
    assert meta.data_shape == tuple(loaded.problem.data_shape)
    n_meta = sum(p.numel() for p in meta.module.parameters())
    assert n_meta == sum(p.numel() for p in loaded.denoiser.parameters())
    x = torch.randn(2, *loaded.problem.data_shape)
    with torch.no_grad():
        feats = loaded.denoiser.features(x, torch.tensor([0.5, 0.7]),
                                         loaded.problem.cond_map(torch.tensor([0, 1])))
    assert [f.shape[-1] for f in feats] == meta.module.feature_widths()
    plan = build_plan(cfg, gpus=1)
    assert plan.rows and plan.teacher
