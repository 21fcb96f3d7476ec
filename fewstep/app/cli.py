"""The ``fewstep`` command line (typer): the one entry point.

``fewstep ...``, ``python -m fewstep ...``, ``torchrun ... -m fewstep ...`` and
``python -m fewstep.distill ...`` (= ``fewstep distill ...``) all go through :func:`run`, which
configures logging (info messages such as "resumed from ..." go to stderr) and turns every user
error -- bad options included -- into one line on stderr and exit code 2, and a write the
operating system refused into one line and exit code 3 (see :mod:`fewstep.errors`). Each
command validates its options first (:mod:`fewstep.app.validation`). ``key=value`` overrides may
stand anywhere on the line, before or after options.

Subcommands: ``teacher train``, ``teacher check``, ``classifier train``, ``sample``, ``eval``,
``distill``, ``demo``, ``plan``, ``export``. ``fewstep COMMAND --help`` documents each.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, ParamSpec, TypeVar

import typer

from fewstep.app import validation
from fewstep.app.cli_eval import eval_cmd
from fewstep.app.cli_options import (
    AllowBuilderOpt,
    DataOpt,
    NoiseCorrectionOpt,
    Overrides,
    Overwrite,
    Samplers,
)
from fewstep.app.logs import configure_logging
from fewstep.app.model_loading import load_models, sample_exported, sampler_specs
from fewstep.app.teacher_check import teacher_check_cmd
from fewstep.errors import EXIT_INTERRUPTED, EXIT_USER_ERROR, error_exit

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Distill diffusion / flow-matching generators into few-step generators.")
teacher_app = typer.Typer(no_args_is_help=True, help="Train a teacher; check a diffusers one.")
classifier_app = typer.Typer(no_args_is_help=True,
                             help="Train a feature network (digits, or your own labels).")
app.add_typer(teacher_app, name="teacher")
app.add_typer(classifier_app, name="classifier")

P = ParamSpec("P")
R = TypeVar("R")


@app.callback()
def _root() -> None:
    """Distill diffusion / flow-matching generators into few-step generators."""
    configure_logging()


def user_errors(fn: Callable[P, R]) -> Callable[P, R]:
    """Turn user errors into one line on stderr and their exit code (:func:`error_exit`):
    :class:`~fewstep.errors.FewstepError` 2 (:class:`~fewstep.errors.WriteError` 3), an
    :class:`OSError` of a write 3."""
    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except (typer.Exit, typer.Abort, typer.exceptions.TyperException, KeyboardInterrupt):
            raise
        except Exception as e:
            mapped = error_exit(e)
            if mapped is None:
                raise
            typer.echo(mapped[1], err=True)
            raise typer.Exit(mapped[0]) from None
    return wrapper


teacher_app.command("check")(user_errors(teacher_check_cmd))  # fewstep/app/teacher_check.py


@teacher_app.command("train")
@user_errors
def teacher_train(
    out: Annotated[Path, typer.Option(help="where to write the teacher (.safetensors)")],
    config: Annotated[Path | None, typer.Option(help="YAML TeacherConfig")] = None,
    overrides: Overrides = None,
    data: Annotated[str | None, typer.Option(
        help="built-in name or your own images (folder, .npy / .npz / .safetensors, saved "
             "datasets folder); without --config the preset is chosen by image size")] = None,
    minutes: Annotated[float | None, typer.Option(min=0.01, help="time budget (minutes)")
                       ] = None,
    quiet: Annotated[bool, typer.Option(help="no progress bar")] = False,
    overwrite: Overwrite = False,
) -> None:
    """Train a flow-matching teacher and save its EMA weights (with sample grids for your own
    images in <out stem>_samples/)."""
    from fewstep.data.problem import get_problem
    from fewstep.presets import preset_path
    from fewstep.teachers.training import TeacherConfig, teacher_preset_for, train_teacher
    from fewstep.utils.config_files import load_config, validate

    extra = list(overrides or [])
    if data is not None:
        extra.insert(0, f"data={json.dumps(validation.data_option(data))}")
    if minutes is not None:
        extra.append(f"minutes={minutes}")
    if config is None and data is not None:
        data_cfg = {"data": validation.data_option(data)}
        problem = get_problem(validate(TeacherConfig, data_cfg, "--data").data)
        config = preset_path(teacher_preset_for(tuple(problem.data_shape)))
        if not quiet:
            typer.echo(f"{problem.image_data().summary() if problem.is_user_data else data}; "
                       f"preset {config.stem}", err=True)
    cfg = load_config(TeacherConfig, config, extra)
    validation.check_teacher_train(out, cfg.device, overwrite)
    _, info = train_teacher(cfg, out, progress=not quiet, overwrite=overwrite)
    typer.echo(json.dumps({"out": str(out), **info}))


@classifier_app.command("train")
@user_errors
def classifier_train(
    out: Annotated[Path | None, typer.Option(
        help="output .safetensors (default without --data: the shipped digits asset)")] = None,
    seed: Annotated[int, typer.Option(help="random seed")] = 0,
    data: Annotated[str | None, typer.Option(
        help="your own labelled images: train a feature network / class judge on them "
             "(use it with fewstep eval --features classifier:FILE)")] = None,
    steps: Annotated[int, typer.Option(min=1, help="training steps (with --data)")] = 1500,
    overwrite: Overwrite = False,
) -> None:
    """Train the digits feature network, or (--data) a classifier on your own labels, used for
    Fréchet distance / PRDC / class accuracy."""
    from fewstep.evaluation.digits_classifier import DEFAULT_ASSET, train_and_save_classifier

    if out is not None:
        validation.check_classifier_train(out, seed, overwrite)
    else:
        validation.seed(seed)
    if data is None:
        typer.echo(json.dumps(train_and_save_classifier(out or DEFAULT_ASSET, seed=seed),
                              default=str))
        return
    from fewstep.errors import ConfigError
    from fewstep.evaluation.image_classifier import save_image_classifier, train_image_classifier

    if out is None:
        raise ConfigError("--out: required with --data (where to write the classifier)")
    model, record = train_image_classifier(validation.data_option(data), steps=steps, seed=seed)
    save_image_classifier(model, out, record)
    typer.echo(json.dumps({"out": str(out), **record}))


@app.command("sample")
@user_errors
def sample_cmd(
    out: Annotated[Path, typer.Option(help="output folder (grid.png, samples.safetensors)")],
    samplers: Samplers = "teacher_8",
    teacher: Annotated[Path | None, typer.Option(help="teacher file; default: shipped")] = None,
    student: Annotated[Path | None, typer.Option(help="student file (student.safetensors)")] = None,
    data: DataOpt = None,
    num: Annotated[int, typer.Option(min=1, help="samples per sampler")] = 100,
    seed: Annotated[int, typer.Option(help="noise seed (same noise for every sampler)")] = 0,
    device: Annotated[str, typer.Option(help="cpu, cuda, cuda:1, mps ...")] = "cpu",
    prompt: Annotated[list[str] | None, typer.Option(
        help="prompt for an exported text-to-image student folder (repeatable; --num images "
             "per prompt)")] = None,
    noise_correction: NoiseCorrectionOpt = None,
    allow_builder: AllowBuilderOpt = None,
    overwrite: Overwrite = False,
) -> None:
    """Generate a same-noise grid (PNG) and tensors (safetensors) for each sampler.

    ``--student FOLDER`` (written by ``fewstep export``) samples that student alone: ``--num``
    images per ``--prompt`` for a text-to-image student (decoded through its VAE)."""
    from fewstep.evaluation.evaluate import eval_noise, run_sampler
    from fewstep.utils.files import save_tensors
    from fewstep.utils.output_dirs import check_output_dir, output_folder
    from fewstep.utils.viz import save_panels

    validation.check_sample(out, samplers, teacher, student, data, num, seed, device, prompt)
    inputs = [p for p in (teacher, student) if p is not None]
    check_output_dir(out, "sample", overwrite, inputs)
    if student is not None and student.is_dir():
        sample_exported(student, out, prompt, num, seed, device, overwrite)
        return
    if prompt:
        raise typer.BadParameter("--prompt needs --student FOLDER (an exported student)")
    specs = sampler_specs(samplers, noise_correction)
    problem, den, w, shift, st = load_models(teacher, student, data, device, allow_builder)
    noise, cond = eval_noise(problem, num, seed, device)
    outs = {sp.name: run_sampler(sp, noise, cond, den, w, shift, st, seed=seed)[0] for sp in specs}
    tensors = dict(outs)
    if cond is not None:
        tensors["labels"] = cond
    with output_folder(out, "sample", overwrite, inputs) as tmp:
        save_panels(tmp / "grid.png", list(outs.values()), list(outs), nrow=10)
        save_tensors(tmp / "samples.safetensors", tensors, "samples", {"seed": seed})
    typer.echo(f"wrote {out / 'grid.png'} and {out / 'samples.safetensors'}")


@app.command("export")
@user_errors
def export_cmd(
    run: Annotated[Path, typer.Option(help="a finished distill run folder")],
    out: Annotated[Path, typer.Option(help="output folder (exported student)")],
    components: Annotated[str, typer.Option(
        help="auto | reference | full: a LoRA student references its base (the teacher's "
             "pretrained folder / hub id) unless 'full' copies the whole pipeline; decoupled / "
             "shared students are always complete pipelines (auto: reference for LoRA)")
    ] = "auto",
    device: Annotated[str, typer.Option(help="cpu, cuda, ...")] = "cpu",
    overwrite: Overwrite = False,
    fmt: Annotated[str, typer.Option("--format", help=(
        "diffusers | comfyui | both: ComfyUI / kohya per-step LoRA files and a ComfyUI "
        "workflow (LoRA students; both: in OUT/comfyui)"))] = "diffusers",
    key_format: Annotated[str | None, typer.Option(help="ComfyUI files' key format: kohya | "
                                                   "diffusion_model | transformer")] = None,
) -> None:
    """Export a run's EMA student as a folder (all steps; diffusers teachers: a folder plain
    diffusers loads, with a model card and loading snippet; see docs/export.md)."""
    from fewstep.export.run import export_run

    validation.check_export(run, out, components, device)
    folder = export_run(run, out, components, device, overwrite, fmt, key_format)
    typer.echo(f"wrote {folder}")


app.command("eval")(user_errors(eval_cmd))  # fewstep/app/cli_eval.py


@app.command("distill")
@user_errors
def distill_cmd(
    config: Annotated[Path | None, typer.Option(help="YAML DistillConfig (see fewstep/presets)")
                      ] = None,
    overrides: Overrides = None,
    out: Annotated[Path | None, typer.Option(help="run folder (default runs/<method>_<data>)")
                   ] = None,
    resume: Annotated[bool, typer.Option(help="continue from the newest good checkpoint")
                      ] = False,
    preset: Annotated[str | None, typer.Option(help="a shipped preset name instead of --config")
                      ] = None,
    quiet: Annotated[bool, typer.Option(help="no progress bar, warnings only")] = False,
    overwrite: Overwrite = False,
) -> None:
    """Distill a teacher into a few-step student (any method: see the config's ``method``).

    Prints one JSON line ``{"out", "student", "step", "seconds"}`` when done; exit code 143
    after SIGTERM / SIGINT (a checkpoint was written; continue with --resume)."""
    from fewstep.app.run_distill import run_distill
    from fewstep.errors import TrainingInterrupted

    configure_logging(quiet)
    config = _config_path(config, preset)
    validation.check_run_out(out)
    try:
        trainer = run_distill(config, overrides or [], out, resume,
                              progress=not quiet, overwrite=overwrite)
    except TrainingInterrupted as e:
        typer.echo(f"stopped: {e}", err=True)
        raise typer.Exit(EXIT_INTERRUPTED) from None
    if trainer.dist.is_main:
        typer.echo(json.dumps({"out": str(trainer.run_dir),
                               "student": str(trainer.run_dir / "student.safetensors"),
                               "step": trainer.step,
                               "seconds": round(getattr(trainer, "seconds", 0.0), 1)}))


def _config_path(config: Path | None, preset: str | None) -> Path | None:
    """``--config`` or the shipped ``--preset`` (not both)."""
    from fewstep.presets import preset_path

    if preset is None:
        return config
    if config is not None:
        raise typer.BadParameter("give --config or --preset, not both")
    return preset_path(preset)


@app.command("demo")
@user_errors
def demo_cmd(
    out: Annotated[Path, typer.Option(help="output folder")] = Path("demo_out"),
    overrides: Overrides = None,
    data: Annotated[str | None, typer.Option(
        help="your own images (folder, .npy / .npz / .safetensors, saved datasets folder): "
             "train a teacher, distill, evaluate and report on them")] = None,
    minutes: Annotated[float, typer.Option(min=0.5, help="time budget with --data (minutes)")
                       ] = 15.0,
    teacher: Annotated[Path | None, typer.Option(
        help="with --data: use this teacher file instead of training one")] = None,
    features: Annotated[str, typer.Option(
        help="with --data: auto | pixels | classifier:FILE | builder:pkg.mod:fn")] = "auto",
    quiet: Annotated[bool, typer.Option(help="no progress bar")] = False,
    overwrite: Overwrite = False,
) -> None:
    """Distill the shipped digits teacher into a 2-step student (Turbo++) and report; with
    --data, the whole pipeline on your own images."""
    from fewstep.app.demo import run_demo, run_image_demo

    validation.output_folder_target(out)
    if data is None:
        if teacher is not None:
            raise typer.BadParameter("--teacher needs --data")
        run_demo(out, overrides, progress=not quiet, overwrite=overwrite)
        return
    run_image_demo(validation.data_option(data), out, minutes, teacher, overrides,
                   progress=not quiet, features=features, overwrite=overwrite)


@app.command("plan")
@user_errors
def plan_cmd(
    config: Annotated[Path | None, typer.Option(help="YAML DistillConfig")] = None,
    overrides: Overrides = None,
    preset: Annotated[str | None, typer.Option(help="a shipped preset name instead of --config")
                      ] = None,
    gpus: Annotated[int, typer.Option(min=1, help="number of GPUs (processes)")] = 1,
    gpu_memory_gb: Annotated[float | None, typer.Option(help="memory of one GPU (GiB)")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Parameter counts and estimated per-GPU memory (models built on the meta device: no
    weights loaded or downloaded)."""
    from fewstep.app.plan import build_plan, format_plan
    from fewstep.app.run_distill import load_distill_config

    validation.plan_options(gpus, gpu_memory_gb)
    plan = build_plan(load_distill_config(_config_path(config, preset), overrides or []), gpus,
                      gpu_memory_gb)
    typer.echo(plan.to_json() if json_out else format_plan(plan))


def run(argv: list[str] | None = None, prog_name: str = "fewstep") -> int:
    """Run the app on ``argv`` (default ``sys.argv[1:]``); returns the exit code.

    Usage errors (unknown option, bad value) are one line on stderr with code 2, like every
    other user error."""
    configure_logging()
    try:
        rc = app(args=argv, prog_name=prog_name, standalone_mode=False)
    except typer.exceptions.TyperException as e:  # usage errors, bad parameters
        fmt = getattr(e, "format_message", None)
        msg = " ".join(str(fmt() if callable(fmt) else e).split())
        if msg:  # (empty after the help text that a bare group prints)
            typer.echo(f"error: {msg} (see --help)", err=True)
        return EXIT_USER_ERROR
    except (typer.Abort, KeyboardInterrupt):
        return 130
    return rc if isinstance(rc, int) else 0


def main() -> None:
    """Entry point of the ``fewstep`` console script and ``python -m fewstep``."""
    sys.exit(run())


if __name__ == "__main__":
    main()
