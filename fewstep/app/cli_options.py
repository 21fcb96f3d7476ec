"""Command-line options several ``fewstep`` commands share (typer ``Annotated`` types)."""

from __future__ import annotations

from typing import Annotated

import typer

Overrides = Annotated[list[str] | None, typer.Argument(help="dotted.key=value overrides")]
DataOpt = Annotated[str | None, typer.Option(
    help="digits | 8gaussians | checkerboard | moons, or a path to your own images (default: "
         "the student's / teacher's data)")]
Samplers = Annotated[str, typer.Option(help="comma-separated: teacher_<N>, student_<K>; suffix "
                                            "_nc / _naive forces noise correction on / off")]
AllowBuilderOpt = Annotated[list[str] | None, typer.Option(
    help="MODULE:FUNCTION: let a student of a custom teacher (teacher.builder) import and call "
         "that builder to rebuild its networks (repeatable; nothing is imported otherwise)")]
NoiseCorrectionOpt = Annotated[bool | None, typer.Option(
    "--noise-correction/--no-noise-correction",
    help="bias-corrected first step at sigma = 1 for epsilon-prediction models (default: on "
         "for zero-terminal-SNR epsilon teachers / students; a suffix on a sampler wins)")]

Overwrite = Annotated[bool, typer.Option(
    "--overwrite", help="replace --out even if it holds a run, another output or your files "
                        "(deleted once the new output or run is in place)")]

__all__ = ["AllowBuilderOpt", "DataOpt", "NoiseCorrectionOpt", "Overrides", "Overwrite",
           "Samplers"]
