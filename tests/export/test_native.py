"""Export a K-step student (full copies or base + per-step LoRA) and reload it exactly."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from fewstep.core.samplers import sample
from fewstep.export.native import read_student_folder, resolve_builder, write_student_folder
from fewstep.networks.mlp import ResMLP
from fewstep.student.lora import PerStepLoRA
from fewstep.teachers.diffusers.zimage import ZIMAGE_LORA_TARGETS, ZImageDenoiser
from fewstep.testing.tiny_pipelines import tiny_latents

SIGMAS = [1.0, 0.6]


def _perturb(m: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.01)


def _run(step_fn, cond, seed=11):
    noise = tiny_latents(seed=seed)
    fresh = [tiny_latents(seed=seed + 1)]
    with torch.no_grad():
        return sample(step_fn, noise, cond, SIGMAS, transition_mode="fresh",
                      step_noises=fresh).sample


def test_full_copies_roundtrip(zden, prompt_cond, tmp_path):
    steps = [copy.deepcopy(zden) for _ in SIGMAS]
    for i, s in enumerate(steps):
        _perturb(s, i)
    write_student_folder(tmp_path / "full", steps, SIGMAS, extra={"teacher": "tiny"})
    index = json.loads((tmp_path / "full/student_index.json").read_text())
    assert index["mode"] == "full" and index["sigmas"] == SIGMAS
    assert (tmp_path / "full/step1/model.safetensors").exists()
    loaded = read_student_folder(tmp_path / "full")
    assert isinstance(loaded.steps[0], ZImageDenoiser) and loaded.num_steps == 2
    assert torch.equal(loaded.sigmas, torch.tensor(SIGMAS))
    want = _run(lambda k, x, s, c: steps[k](x, s, c), prompt_cond)
    got = _run(loaded.step_fn(), prompt_cond)
    assert torch.equal(want, got)


def test_lora_roundtrip(zden, prompt_cond, tmp_path):
    lora = PerStepLoRA(copy.deepcopy(zden), num_steps=2, rank=4,
                       target_modules=ZIMAGE_LORA_TARGETS)
    with torch.no_grad():
        for k in range(2):
            for n, p in lora.named_step_parameters(k):
                if ".lora_B." in n:
                    p.normal_(0, 0.1)
    write_student_folder(tmp_path / "lora", lora, SIGMAS)
    assert (tmp_path / "lora/base/model.safetensors").exists()
    assert (tmp_path / "lora/step1/adapter.safetensors").exists()
    loaded = read_student_folder(tmp_path / "lora")
    assert loaded.lora is not None and loaded.lora.targets == lora.targets
    want = _run(lora.step_fn(), prompt_cond)
    got = _run(loaded.step_fn(), prompt_cond)
    assert torch.equal(want, got)
    assert not torch.equal(_run(lambda k, x, s, c: zden(x, s, c), prompt_cond), got)


def test_plain_module_with_explicit_builder(tmp_path):
    kwargs = {"data_shape": [16, 8, 8], "hidden": 32, "depth": 1, "emb": 16}
    torch.manual_seed(0)
    steps = [ResMLP(**kwargs) for _ in SIGMAS]
    for i, s in enumerate(steps):
        _perturb(s, i)
    write_student_folder(tmp_path / "mlp", steps, SIGMAS,
                         builder=("fewstep.networks.mlp:ResMLP", kwargs))
    loaded = read_student_folder(tmp_path / "mlp")
    want = _run(lambda k, x, s, c: steps[k](x, s, c), None)
    assert torch.equal(want, _run(loaded.step_fn(), None))
    with pytest.raises(ValueError, match="cannot infer a builder"):
        write_student_folder(tmp_path / "mlp2", steps, SIGMAS)


def test_builder_allow_list():
    with pytest.raises(ValueError, match="not under"):
        resolve_builder("os:system")
    with pytest.raises(ValueError, match="not of the form"):
        resolve_builder("fewstep.networks.mlp:ResMLP.__init__")
    assert resolve_builder("fewstep.networks.mlp:ResMLP") is ResMLP
