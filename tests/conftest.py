"""Shared fixtures: tiny teachers trained once per test session (seconds on a CPU)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fewstep.teachers.training import NetworkConfig, TeacherConfig, train_teacher
from fewstep.testing.tiny_pipelines import TINY_MAX_SEQ

torch.set_num_threads(min(2, torch.get_num_threads()))


def _train(tmp: Path, name: str, **kw) -> Path:
    path = tmp / f"{name}.safetensors"
    cfg = TeacherConfig(network=NetworkConfig(hidden=64, depth=2, emb=32), batch_size=256,
                        warmup=50, **kw)
    train_teacher(cfg, path, progress=False)
    return path


@pytest.fixture(scope="session")
def toy_teacher_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small velocity teacher on the 2-D checkerboard (800 steps, ~10 s)."""
    return _train(tmp_path_factory.mktemp("teachers"), "checkerboard", data="checkerboard",
                  steps=800)


@pytest.fixture(scope="session")
def digits_teacher_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small class-conditional velocity teacher on digits (300 steps: fit, not quality)."""
    return _train(tmp_path_factory.mktemp("teachers"), "digits", data="digits", steps=300)


@pytest.fixture(scope="session")
def toy_eps_teacher_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same toy teacher trained with epsilon prediction (singular x0 at sigma = 1)."""
    return _train(tmp_path_factory.mktemp("teachers"), "checkerboard_eps", data="checkerboard",
                  steps=400, prediction="epsilon")


@pytest.fixture
def toy_distill(toy_teacher_path: Path, tmp_path: Path):
    """``run(method, K=2, **sections) -> {"init", "trained", "teacher"}``: train ``method``
    briefly through the :class:`~fewstep.distill.trainer.Trainer` on the checkerboard and return
    the SWD to held-out data of the student before / after training and of the teacher's naive
    K-step Euler sampler, all from the same evaluation noise (``fewstep.evaluation.evaluate``)."""
    import copy

    from fewstep.distill.config import DistillConfig
    from fewstep.distill.trainer import Trainer
    from fewstep.evaluation.evaluate import evaluate_samplers
    from fewstep.utils.config_files import validate

    def run(method: str, num_steps: int = 2, **sections: dict) -> dict[str, float]:
        data = {"method": method, "data": "checkerboard",
                "teacher": {"path": str(toy_teacher_path)},
                "student": {"num_steps": num_steps},
                "cache": {"dir": str(tmp_path / "cache"), "size": 2048, "shard_size": 2048},
                "train": {"iterations": 150, "batch_size": 256, "lr": 3e-4, "ema_decay": 0.9}}
        for k, v in sections.items():
            data[k] = {**data.get(k, {}), **v}
        torch.manual_seed(0)
        tr = Trainer(validate(DistillConfig, data), tmp_path / f"run_{method}", progress=False)
        init = copy.deepcopy(tr.student).eval()
        student = tr.train()
        k = num_steps
        names = [f"teacher_{k}", f"student_{k}"]
        t = tr.teacher
        before, _ = evaluate_samplers(t.problem, names, t.denoiser, student=init)
        after, _ = evaluate_samplers(t.problem, names, t.denoiser, student=student)
        out = {"init": before[f"student_{k}"]["swd"], "trained": after[f"student_{k}"]["swd"],
               "teacher": before[f"teacher_{k}"]["swd"]}
        print(f"{method} K={k}: swd {out}")
        return out

    return run


# ---------------------------------------------------------------- tiny Z-Image stack
@pytest.fixture(scope="session")
def tiny_pipe():
    from fewstep.testing import build_tiny_zimage_pipeline

    return build_tiny_zimage_pipeline(seed=0)


@pytest.fixture(scope="session")
def zden(tiny_pipe):
    from fewstep.teachers.diffusers.zimage import ZImageDenoiser

    # frozen like a teacher; tests that train deep-copy it first
    den = ZImageDenoiser.from_pipeline(tiny_pipe, max_sequence_length=TINY_MAX_SEQ)
    return den.requires_grad_(False)


@pytest.fixture(scope="session")
def prompt_cond(tiny_pipe):
    from fewstep.core.conditioning import PromptEmbeds

    with torch.no_grad():
        pos, _ = tiny_pipe.encode_prompt(["a red cat", "a photo of a big blue dog"],
                                         device="cpu", do_classifier_free_guidance=False,
                                         max_sequence_length=TINY_MAX_SEQ)
    return PromptEmbeds.from_list(pos)
