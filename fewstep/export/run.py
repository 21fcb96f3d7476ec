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
from fewstep.export.verify import COMMAND, legacy_export
from fewstep.student.student import Student
from fewstep.student.student_file import load_student_file
from fewstep.utils.config_files import load_config, read_text_file
from fewstep.utils.output_dirs import check_output_dir, output_folder
from fewstep.utils.run_lock import reading_run

#: ``fewstep export --format`` choices
FORMATS = ("diffusers", "comfyui", "both")
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
            out[path.stem] = json.loads(read_text_file(path, "metrics file"))
        except (ConfigError, json.JSONDecodeError):
            continue
    hist = run_dir / "losses.jsonl"
    if hist.is_file():
        try:
            text = read_text_file(hist, "loss log")
        except ConfigError:
            text = ""
        rows = [r for r in text.splitlines() if r.strip()]
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


def export_inputs(run: Path, cfg: DistillConfig) -> list[Path]:
    """What an export reads (``--out`` may not hold any of them): the run folder and the
    teacher's file or local folder."""
    found = [run]
    for p in (cfg.teacher.path, cfg.teacher.pretrained):
        if p and Path(p).expanduser().exists():
            found.append(Path(p).expanduser())
    return found


def export_run(run_dir: str | Path, out: str | Path, components: str = "auto",
               device: str | torch.device = "cpu", overwrite: bool = False,
               fmt: str = "diffusers", key_format: str | None = None) -> Path:
    """Export ``run_dir``'s ``student.safetensors`` to the folder ``out``; returns ``out``.

    ``out`` follows :mod:`fewstep.utils.output_dirs`: absent, empty or a previous export
    (replaced atomically), else refused unless ``overwrite``; never a folder holding the run
    or the teacher. A run still training (its run lock held) is refused.

    ``fmt``: ``diffusers`` (the folder above), ``comfyui`` (per-step ComfyUI / kohya LoRA
    files and a workflow, :func:`fewstep.export.comfyui.export_comfyui`) or ``both`` (the
    diffusers folder with the ComfyUI files in ``out/comfyui``); ``key_format``: the ComfyUI
    files' key format (default: the network's)."""
    if fmt not in FORMATS:
        raise ConfigError(f"--format: {fmt!r} is not one of {', '.join(FORMATS)}")
    run = Path(run_dir).expanduser()
    cfg_path, st_path = run / "config.yaml", run / "student.safetensors"
    if not cfg_path.is_file() or not st_path.is_file():
        raise ConfigError(f"--run: {run} is not a finished run (needs config.yaml and "
                          "student.safetensors)")
    with reading_run(run, "--run"):
        cfg = load_config(DistillConfig, cfg_path)
        inputs = export_inputs(run, cfg)
        check_output_dir(out, COMMAND, overwrite, inputs, legacy_export)  # before any work
        return _export(run, cfg, st_path, Path(out), components, device, overwrite, inputs,
                       fmt, key_format)


def _export(run: Path, cfg: DistillConfig, st_path: Path, out: Path, components: str,
            device: str | torch.device, overwrite: bool, inputs: list[Path], fmt: str,
            key_format: str | None) -> Path:
    dev = torch.device(device)
    loaded = load_run_teacher(cfg, dev)
    try:
        family = export_family(loaded.config)
    except ValueError as e:
        raise ConfigError(f"--run: {e}") from None
    if family is None and fmt != "diffusers":
        raise ConfigError(f"--format: {fmt} needs a diffusers teacher (teacher.kind zimage or "
                          f"diffusers); a teacher.kind {loaded.config.get('kind')} student is "
                          "written in fewstep's own format (--format diffusers)")
    if family is None and components not in ("auto", "full", "copy"):
        raise ConfigError(f"--components: {components!r} needs a diffusers teacher (teacher.kind "
                          f"diffusers, zimage or unet_eps); a teacher.kind "
                          f"{loaded.config.get('kind')} student is written whole in fewstep's "
                          "own format")
    student, scfg = load_student_file(st_path, dev, like=loaded.denoiser)
    if fmt != "diffusers":
        from fewstep.export.comfyui import check_comfyui

        try:  # before anything is written
            check_comfyui(student, key_format)
        except ValueError as e:
            raise ConfigError(f"--format {fmt}: {e}") from None
    record = {"teacher_fingerprint": scfg.get("teacher_fingerprint", loaded.identity),
              "run": str(run.resolve()), "export_format": fmt}
    with output_folder(out, COMMAND, overwrite, inputs, legacy_export, record) as tmp:
        if fmt == "comfyui":
            _comfyui(student, tmp / "comfyui", loaded.config, key_format, cfg.method)
            for entry in list((tmp / "comfyui").iterdir()):  # the files at the top of `out`
                entry.rename(tmp / entry.name)
            (tmp / "comfyui").rmdir()
        else:
            # a diffusers export builds its folder beside `out` (README names `out`) and hands
            # it over to this session; fewstep's own format is written into the session's
            # folder
            try:
                export_trained(student, out if family is not None else tmp, loaded.config,
                               loaded.problem, loaded.pipeline, components, cfg,
                               run_metrics(run))
            except ValueError as e:
                raise ConfigError(f"--components: {e}") from None
            if fmt == "both":
                _comfyui(student, tmp / "comfyui", loaded.config, key_format, cfg.method)
        if not any(p.name != ".lock" for p in tmp.iterdir()):
            raise RuntimeError(f"the export of {run} wrote nothing into its output session")
    return out


def _comfyui(student: Student, out: Path, teacher_config: dict[str, Any],
             key_format: str | None, recipe: str) -> Path:
    from fewstep.export.comfyui import export_comfyui

    try:
        return export_comfyui(student, out, teacher_config, key_format, recipe=recipe)
    except ValueError as e:
        raise ConfigError(f"--format: {e}") from None


__all__ = ["FORMATS", "export_inputs", "export_run", "export_trained", "run_metrics",
           "run_summary"]
