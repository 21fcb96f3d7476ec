"""``fewstep export``: a finished run's (EMA) student -> an exported student folder.

:func:`export_run` reads ``RUN_DIR/config.yaml`` and ``RUN_DIR/student.safetensors``, loads the
teacher the run was trained with (same ``teacher.*`` settings: it supplies the architecture and,
for Z-Image, the VAE / text encoder / tokenizer), rebuilds the student and writes it with
:func:`fewstep.diffusers_adapters.student_pipeline.export_student`. Sample the result with
``fewstep sample --student FOLDER --prompt "..."`` or
:class:`~fewstep.diffusers_adapters.student_pipeline.StudentPipeline`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from fewstep.config import load_config
from fewstep.distill.config import DistillConfig
from fewstep.distill.student import Student
from fewstep.errors import CheckpointError, ConfigError
from fewstep.io import load_state_into, load_tensors


def export_trained(student: Student, out: str | Path, teacher_config: dict[str, Any],
                   problem: Any, pipeline: Any = None, components: str = "copy") -> Path:
    """Export an in-memory student (e.g. ``Trainer.ema``) trained on ``problem``."""
    from fewstep.diffusers_adapters.student_pipeline import export_student

    return export_student(student, out, teacher_config, pipeline, components,  # type: ignore
                          num_classes=problem.num_classes,
                          latent_shape=tuple(problem.data_shape))


def export_run(run_dir: str | Path, out: str | Path, components: str = "copy",
               device: str | torch.device = "cpu") -> Path:
    """Export ``run_dir``'s ``student.safetensors`` to the folder ``out``; returns ``out``."""
    from fewstep.distill.teachers import load_teacher
    from fewstep.distill.trainer import float32_trainables

    run = Path(run_dir).expanduser()
    cfg_path, st_path = run / "config.yaml", run / "student.safetensors"
    if not cfg_path.is_file() or not st_path.is_file():
        raise ConfigError(f"--run: {run} is not a finished run (needs config.yaml and "
                          "student.safetensors)")
    cfg = load_config(DistillConfig, cfg_path)
    dev = torch.device(device)
    loaded = load_teacher(cfg, dev)
    tensors, scfg = load_tensors(st_path, kind="student")
    try:
        s = scfg["student"]
        student = Student(loaded.denoiser, torch.tensor(scfg["sigmas"]), s["parameterization"],
                          s["transition"], s["lora_rank"], s["lora_alpha"], s["lora_targets"])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{st_path}: student config is invalid ({e})") from None
    float32_trainables(student)
    load_state_into(student, tensors, str(st_path))
    student = student.to(dev).eval()
    return export_trained(student, out, loaded.config, loaded.problem, loaded.pipeline,
                          components)


__all__ = ["export_run", "export_trained"]
