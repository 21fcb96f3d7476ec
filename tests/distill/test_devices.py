"""Device placement without a GPU: every recipe's losses, backward passes and log terms, and a
Z-Image student's sampling, on the "meta" device.

Meta tensors carry shapes and devices but no data, so a host tensor mixed into device
computations fails here the way it fails on CUDA ("Tensor on device cpu is not on the
expected device meta"), and any read of device values on the host (``.tolist()``, ``float()``
-- a host sync on a GPU) fails with "Cannot copy out of meta tensor". Nothing here checks
values: the other tests do that on the CPU.
"""

from __future__ import annotations

import pytest
import torch

from fewstep.core.conditioning import PromptEmbeds
from fewstep.data.problem import get_problem
from fewstep.distill.context import Batch, DistillContext
from fewstep.distill.engine.precision import DeferredLogs
from fewstep.distill.methods.registry import config_class, method_class, method_names
from fewstep.networks.registry import network_denoiser
from fewstep.student.student import Student
from fewstep.teachers.diffusers.zimage import ZImageDenoiser
from fewstep.testing import build_tiny_zimage_pipeline
from fewstep.utils.config_files import validate

META = torch.device("meta")


def _on_meta(n: int, *shape: int) -> torch.Tensor:
    return torch.randn(n, *shape).to(META)


@pytest.mark.parametrize("param", ["decoupled", "lora"])
@pytest.mark.parametrize("name", method_names())
def test_every_recipe_runs_on_a_device_without_host_tensors(name: str, param: str) -> None:
    torch.manual_seed(0)
    den = network_denoiser({"type": "resmlp", "data_shape": [2], "hidden": 32, "depth": 2,
                          "emb": 16}).requires_grad_(False)
    cfg = validate(config_class(name), {"method": name, "data": "checkerboard",
                                        "student": {"num_steps": 2, "parameterization": param,
                                                    "lora_rank": 2}})
    student = Student(den, torch.tensor([1.0, 0.5]), param)
    den.to(META)
    student.to(META)
    ctx = DistillContext(cfg, get_problem("checkerboard"), den, 1.0, student, META,
                         torch.Generator().manual_seed(0), _on_meta(2, 2))
    method = method_class(name)(ctx).to(META)
    batch = Batch(_on_meta(8, 2), None, real=_on_meta(8, 2), teacher_sample=_on_meta(8, 2),
                  teacher_mid=_on_meta(8, 2))
    logs = DeferredLogs()
    out = method.aux_loss(batch, 0) if hasattr(method, "aux_loss") else None
    if out is not None:
        out[0].backward()
        logs.add(1, out[1])
    loss, terms = method.generator_loss(batch, 0)
    loss.backward()
    logs.add(1, terms)  # stacks every log term on the device (a host step index included)
    grads = [p.grad for p in student.parameters() if p.requires_grad]
    assert loss.device == META and any(g is not None and g.device == META for g in grads)


@pytest.mark.parametrize("param", ["decoupled", "lora"])
def test_zimage_student_samples_and_backpropagates_without_a_host_read(param: str) -> None:
    pipe = build_tiny_zimage_pipeline(seed=0)
    den = ZImageDenoiser.from_pipeline(pipe, max_sequence_length=16).requires_grad_(False)
    with torch.no_grad():
        caps, _ = pipe.encode_prompt(["a red cat", "a dog"], device="cpu",
                                     do_classifier_free_guidance=False, max_sequence_length=16)
    cond = PromptEmbeds.from_list(caps).to(META)
    student = Student(den, torch.tensor([1.0, 0.5]), param, lora_rank=2)
    den.to(META)
    student.to(META)
    traj = student.generate(_on_meta(2, 16, 2, 2), cond, generator=torch.Generator())
    traj.sample.float().sum().backward()
    assert traj.sample.device == META
    assert any(p.grad is not None for p in student.parameters() if p.requires_grad)
