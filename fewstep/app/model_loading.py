"""What ``fewstep sample`` and ``fewstep eval`` load: the teacher / student pair they compare
(from files, with the student's recorded data and teacher), the sampler names, and an exported
student folder. Every problem is a one-line error naming the option."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import typer

from fewstep.app import validation


def load_models(teacher: Path | None, student: Path | None, data: str | None, device: str,
                 allow_builders: list[str] | None = None):
    from fewstep.data.problem import get_problem
    from fewstep.data.registry import shipped_teacher
    from fewstep.errors import CheckpointError, ConfigError
    from fewstep.student.student_file import load_student_file
    from fewstep.teachers import rebuild_denoiser
    from fewstep.teachers.base import same_teacher
    from fewstep.teachers.training import denoiser_identity, load_denoiser
    from fewstep.utils.files import read_metadata

    allow = list(allow_builders or [])
    st, scfg = (None, None)
    if student is not None:
        try:
            st, scfg = load_student_file(student, device, allow_builders=allow)
        except CheckpointError as e:
            raise CheckpointError(f"--student: {e}") from None
    built = (scfg or {}).get("denoiser", {})
    custom = teacher is None and "user_builder" in built  # a custom teacher's student
    if data is None and scfg:
        data = scfg["data"]
    if data is None and teacher is not None:  # a teacher trained on your own images
        data = json.loads(read_metadata(teacher).get("config", "{}")).get("data")
    if data is None:
        data = "digits"
    try:
        problem = get_problem(validation.data_option(data))
    except ValueError as e:
        raise ConfigError(f"--data: {e}") from None
    shape, ncls = tuple(problem.data_shape), problem.num_classes
    validation.models_fit(data, shape, ncls, None, "--teacher", scfg, "--student")
    if custom:  # the teacher is what its builder returns (the builder was allowed above)
        den, tcfg = rebuild_denoiser(built, allow).to(device).eval(), built
    else:
        tpath = teacher if teacher is not None else shipped_teacher(data)
        if tpath is None or not tpath.is_file():
            raise ConfigError(f"--data: no shipped teacher for {data!r}; pass --teacher FILE")
        try:
            den, tcfg = load_denoiser(tpath, device)
        except (CheckpointError, ConfigError) as e:  # ConfigError: a network too big to load
            raise type(e)(f"--teacher: {e}") from None
        validation.models_fit(data, shape, ncls, tcfg, "--teacher", scfg, "--student")
        if scfg is not None:
            same = same_teacher(scfg.get("teacher_fingerprint"), denoiser_identity(tpath, den))
            if same is False:
                raise ConfigError(f"--teacher: {tpath} is not the teacher {student} was "
                                  "distilled from (their weights differ); pass --teacher with "
                                  "the teacher file of its run")
    samp = tcfg.get("sampling", {})
    return problem, den, samp.get("cfg_scale", 1.0), samp.get("shift", 1.0), st


def sampler_specs(samplers: str, noise_correction: bool | None) -> list:
    """Parse ``--samplers``; ``--[no-]noise-correction`` fills specs without a suffix."""
    from fewstep.evaluation.evaluate import parse_sampler

    specs = [parse_sampler(s) for s in samplers.split(",")]
    if noise_correction is None:
        return specs
    return [sp if sp.noise_correction is not None else replace(sp, noise_correction=
                                                               noise_correction) for sp in specs]


def sample_exported(folder: Path, out: Path, prompts: list[str] | None, num: int, seed: int,
                    device: str, overwrite: bool = False) -> None:
    """``fewstep sample --student FOLDER``: the export is verified first (complete, not torn
    or mixed: :func:`fewstep.export.verify.verify_export`), then sampled into ``out``."""
    from fewstep.errors import ConfigError, os_error_of
    from fewstep.export.student_pipeline import StudentPipeline
    from fewstep.export.verify import verify_export
    from fewstep.utils.files import save_tensors
    from fewstep.utils.output_dirs import output_folder
    from fewstep.utils.viz import save_panels

    verify_export(folder, "--student")
    try:
        pipe = StudentPipeline.from_pretrained(folder, device=device)
        images = pipe(prompts, num_images_per_prompt=num, seed=seed) if prompts else \
            pipe(num_images=num, seed=seed)
    except (FileNotFoundError, ValueError, KeyError) as e:
        raise ConfigError(f"--student: {e}") from None
    except Exception as e:  # safetensors' own error type for a file it cannot read
        if type(e).__name__ != "SafetensorError" or os_error_of(e) is not None:
            raise
        raise ConfigError(f"--student: {folder}: unreadable weights ({e}); export it again"
                          ) from None
    if not bool(images.isfinite().all()):
        raise ConfigError(f"--student: {folder} produced NaN / Inf images")
    with output_folder(out, "sample", overwrite, [folder]) as tmp:
        save_panels(tmp / "grid.png", [images], [folder.name], nrow=min(10, num))
        save_tensors(tmp / "samples.safetensors", {"images": images}, "samples",
                     {"seed": seed, "prompts": prompts or []})
    typer.echo(f"wrote {out / 'grid.png'} and {out / 'samples.safetensors'}")


__all__ = ["load_models", "sample_exported", "sampler_specs"]
