"""``fewstep eval``: metrics of samplers (teacher / student files), or with ``--run`` the
text-to-image figures of a finished prompt run (:mod:`fewstep.app.eval_run`). Registered on
the app by :mod:`fewstep.app.cli`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fewstep.app import validation
from fewstep.app.cli_options import (
    AllowBuilderOpt,
    DataOpt,
    NoiseCorrectionOpt,
    Overwrite,
    Samplers,
)
from fewstep.app.model_loading import load_models, sampler_specs


def eval_cmd(
    out: Annotated[Path | None, typer.Option(help="metrics JSON path (default: stdout)")] = None,
    samplers: Samplers = "teacher_8,teacher_2",
    teacher: Annotated[Path | None, typer.Option(help="teacher file; default: shipped")] = None,
    student: Annotated[Path | None, typer.Option(help="student file (student.safetensors)")] = None,
    data: DataOpt = None,
    num: Annotated[int, typer.Option(min=10, help="samples per sampler")] = 2000,
    seed: Annotated[int, typer.Option(help="noise seed")] = 1234,
    device: Annotated[str, typer.Option(help="cpu, cuda, ...")] = "cpu",
    features: Annotated[str, typer.Option(
        help="feature space of fd / FID-T / PRDC / diversity: auto (digits: digits_classifier; "
             "your images and --run: pixels) | pixels | digits_classifier | classifier:FILE | "
             "clip:FOLDER | torchscript:FILE (e.g. the FID Inception) | builder:pkg.mod:fn")
                        ] = "auto",
    noise_correction: NoiseCorrectionOpt = None,
    allow_builder: AllowBuilderOpt = None,
    timing_batch: Annotated[int, typer.Option(min=1, help="batch of the timing calls (the same "
                                              "for every sampler)")] = 256,
    timing_repeats: Annotated[int, typer.Option(min=1, help="interleaved timed rounds (median; "
                                                "one untimed warm-up round first)")] = 7,
    run: Annotated[Path | None, typer.Option(
        help="a finished prompt run (text-to-image): FID-T against the teacher's own samples, "
             "CLIP score, diversity and image statistics on --prompts x --seeds images")] = None,
    clip: Annotated[Path | None, typer.Option(
        help="with --run: a local CLIP model folder for the CLIP score (default: --features "
             "when it is clip:FOLDER)")] = None,
    reference: Annotated[Path | None, typer.Option(
        help="with --run: a folder of reference images (FID against them)")] = None,
    prompts: Annotated[int, typer.Option(min=1, help="with --run: prompts evaluated")] = 8,
    seeds: Annotated[int, typer.Option(min=1, help="with --run: seeds per prompt (diversity "
                                                   "needs >= 2)")] = 4,
    overwrite: Overwrite = False,
) -> None:
    """Metrics JSON per sampler vs. held-out data and vs. the 8-step teacher (same noise); each
    entry names the feature_space it was scored in. With --run: the text-to-image figures of a
    prompt run's student, each naming its feature network.

    ``seconds_per_image`` is timed like for like: same batch for every sampler, warm-up
    excluded, interleaved repeats, median."""
    from fewstep.evaluation.evaluate import metrics_json
    from fewstep.utils.files import atomic_write_text

    if run is not None:
        from fewstep.app.eval_run import evaluate_run

        if teacher is not None or student is not None or data is not None:
            from fewstep.errors import ConfigError

            raise ConfigError("--run: evaluates the run's own teacher and student; drop "
                              "--teacher / --student / --data")
        validation.check_eval(out, "teacher_1", None, None, None, 10, seed, device, overwrite)
        metrics = evaluate_run(run, "pixels" if features == "auto" else features,
                               str(clip) if clip else None,
                               str(reference) if reference else None, prompts, seeds, seed,
                               device)
    else:
        from fewstep.evaluation.evaluate import evaluate_samplers

        validation.check_eval(out, samplers, teacher, student, data, num, seed, device,
                              overwrite)
        names = [sp.name for sp in sampler_specs(samplers, noise_correction)]
        problem, den, w, shift, st = load_models(teacher, student, data, device, allow_builder)
        metrics, _ = evaluate_samplers(problem, names, den, w, shift, st, num, seed,
                                       device=device, features=features,
                                       timing_batch=timing_batch, timing_repeats=timing_repeats)
    text = metrics_json(metrics)
    if out is not None:
        atomic_write_text(out, text)
    typer.echo(text)


__all__ = ["eval_cmd"]
