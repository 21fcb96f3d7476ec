"""``fewstep export``: a finished run's (EMA) student -> an exported student folder.

:func:`export_run` reads ``RUN_DIR/config.yaml`` and ``RUN_DIR/student.safetensors``, loads the
teacher the run was trained with (same ``teacher.*`` settings: it supplies the architecture, the
frozen LoRA base and, for text-to-image pipelines, the VAE / text encoders / tokenizers),
rebuilds the student and writes it with
:func:`fewstep.export.diffusers_export.export_student`: for diffusers teachers
(``teacher.kind`` ``diffusers`` / ``zimage``: any supported pipeline; ``unet_eps``) a folder
plain diffusers loads (``README.md`` holds the sampling code; see docs/export.md).
``student.safetensors`` may hold the full student state or only its trainable
state (:meth:`~fewstep.student.student.Student.trainable_state_dict`, plus
``base_fingerprint`` in its config, checked against the teacher). Sample the result with
``fewstep sample --student FOLDER --prompt "..."`` or
:class:`~fewstep.export.student_pipeline.StudentPipeline`.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import torch

from fewstep.distill.config import DistillConfig, load_run_teacher
from fewstep.errors import ConfigError
from fewstep.export.diffusers_export import export_family, export_student
from fewstep.student.student import Student
from fewstep.student.student_file import load_student_file
from fewstep.utils.config_files import load_config

#: top-level config sections that are not the recipe's own settings
_NOT_RECIPE = ("method", "data", "teacher", "student", "train", "cache", "eval")


def run_summary(cfg: DistillConfig | None) -> dict[str, Any]:
    """``{"method", "student", "recipe"}`` of a run config for the model card."""
    if cfg is None:
        return {}
    dump = cfg.model_dump(mode="json")
    method = dump.get("method")
    recipe = {k: v for k, v in dump.items() if k not in _NOT_RECIPE and v is not None}
    return {"method": method, "student": dump.get("student", {}), "recipe": recipe}


def run_metrics(run_dir: Path) -> dict[str, Any]:
    """Metrics found in the run folder: ``metrics.json`` / ``eval*.json`` and the last row of
    ``losses.jsonl`` (the final training losses)."""
    out: dict[str, Any] = {}
    for path in sorted([*run_dir.glob("metrics*.json"), *run_dir.glob("eval*.json")]):
        try:
            out[path.stem] = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            continue
    hist = run_dir / "losses.jsonl"
    if hist.is_file():
        rows = [r for r in hist.read_text(encoding="utf-8").splitlines() if r.strip()]
        with contextlib.suppress(json.JSONDecodeError):
            out["final_losses"] = json.loads(rows[-1]) if rows else None
    return {k: v for k, v in out.items() if v is not None}


def export_trained(student: Student, out: str | Path, teacher_config: dict[str, Any],
                   problem: Any, pipeline: Any = None, components: str = "auto",
                   cfg: DistillConfig | None = None,
                   metrics: dict[str, Any] | None = None) -> Path:
    """Export an in-memory student (e.g. ``Trainer.ema``) trained on ``problem``."""
    return export_student(student, out, teacher_config, pipeline, components,  # type: ignore
                          num_classes=problem.num_classes,
                          latent_shape=tuple(problem.data_shape), run=run_summary(cfg),
                          metrics=metrics)


def export_run(run_dir: str | Path, out: str | Path, components: str = "auto",
               device: str | torch.device = "cpu") -> Path:
    """Export ``run_dir``'s ``student.safetensors`` to the folder ``out``; returns ``out``."""
    run = Path(run_dir).expanduser()
    cfg_path, st_path = run / "config.yaml", run / "student.safetensors"
    if not cfg_path.is_file() or not st_path.is_file():
        raise ConfigError(f"--run: {run} is not a finished run (needs config.yaml and "
                          "student.safetensors)")
    cfg = load_config(DistillConfig, cfg_path)
    dev = torch.device(device)
    loaded = load_run_teacher(cfg, dev)
    try:
        family = export_family(loaded.config)
    except ValueError as e:
        raise ConfigError(f"--run: {e}") from None
    if family is None and components not in ("auto", "full", "copy"):
        raise ConfigError(f"--components: {components!r} needs a diffusers teacher (teacher.kind "
                          f"diffusers, zimage or unet_eps); a teacher.kind "
                          f"{loaded.config.get('kind')} student is written whole in fewstep's "
                          "own format")
    student, _ = load_student_file(st_path, dev, like=loaded.denoiser)
    try:
        return export_trained(student, out, loaded.config, loaded.problem, loaded.pipeline,
                              components, cfg, run_metrics(run))
    except ValueError as e:
        raise ConfigError(f"--components: {e}") from None


__all__ = ["export_run", "export_trained", "run_metrics", "run_summary"]
