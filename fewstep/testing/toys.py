"""Small 2-D fixtures the method tests share: a frozen toy network (teacher and student start),
a :class:`DistillContext` around it on the checkerboard, and a batch of noise and real points.

Everything is seeded, so a test sees the same weights and draws whichever file it lives in.
"""

from __future__ import annotations

from typing import Any

import torch

from fewstep.core.denoiser import Denoiser
from fewstep.data.problem import Problem, get_problem
from fewstep.distill.config import DistillConfig
from fewstep.distill.context import Batch, DistillContext
from fewstep.networks.registry import network_denoiser
from fewstep.student.student import Parameterization, Student
from fewstep.utils.config_files import validate


def toy_denoiser(init_std: float | None = 0.1, num_classes: int = 0,
                 null_class: int | None = None) -> Denoiser:
    """The frozen 2-D ResMLP (hidden 32, depth 2, time embedding 16) built after
    ``torch.manual_seed(0)``, every weight redrawn from ``N(0, init_std^2)`` (so the
    zero-initialised output layer is non-trivial; ``None``: as built)."""
    torch.manual_seed(0)
    net: dict[str, Any] = {"type": "resmlp", "data_shape": [2], "hidden": 32, "depth": 2,
                           "emb": 16}
    if num_classes:
        net["num_classes"] = num_classes
    den = network_denoiser(net, null_class=null_class)
    if init_std is not None:
        for p in den.parameters():
            torch.nn.init.normal_(p, std=init_std)
    return den.requires_grad_(False)


def toy_config(method: str, **sections: Any) -> DistillConfig:
    """``method`` on the checkerboard with the given config sections."""
    return validate(DistillConfig, {"method": method, "data": "checkerboard", **sections})


def toy_context(cfg: DistillConfig, den: Denoiser, sigmas: list[float],
                parameterization: Parameterization = "decoupled", teacher: Denoiser | None = None,
                problem: Problem | None = None, example_cond: Any = None) -> DistillContext:
    """A CPU context: a student over ``den`` at levels ``sigmas``, teacher ``teacher`` (default
    ``den``) with CFG scale 1, the checkerboard problem unless ``problem``, the loss generator
    seeded with 0 and a ``(2, 2)`` zero example."""
    st = Student(den, torch.tensor(sigmas), parameterization)
    return DistillContext(cfg, problem or get_problem("checkerboard"),
                          den if teacher is None else teacher, 1.0, st, torch.device("cpu"),
                          torch.Generator().manual_seed(0), torch.zeros(2, 2), example_cond)


def toy_batch(n: int = 16, teacher_sample: bool = False) -> Batch:
    """``n`` noise points (and teacher samples) and ``n`` real points, drawn in that order from a
    generator seeded with 1; no condition."""
    g = torch.Generator().manual_seed(1)
    noise = torch.randn(n, 2, generator=g)
    ts = torch.randn(n, 2, generator=g) if teacher_sample else None
    return Batch(noise, None, teacher_sample=ts, real=torch.randn(n, 2, generator=g))
