"""``fewstep teacher check PIPELINE``: the pre-flight before renting GPUs.

Reads a diffusers pipeline as ``teacher.kind: diffusers`` does and samples N steps through
fewstep's teacher and through the pipeline's own ``__call__`` at its defaults (same prompt,
initial latents and guidance; :mod:`fewstep.teachers.diffusers.teacher_check`). Prints what it
found -- prediction type, time-input map, levels, guidance form -- the max abs difference
relative to the latent std, and what it could not match. Exit codes: 0 within tolerance, 1
beyond it, 2 a pipeline fewstep cannot read (one line saying why).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml

from fewstep.errors import ConfigError

EXIT_BEYOND_TOLERANCE = 1


def parse_call_kwargs(items: list[str] | None) -> dict[str, Any]:
    """``key=value`` strings -> ``{key: YAML value}`` (``--set use_resolution_binning=false``)."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.isidentifier():
            raise ConfigError(f"--set: {item!r} is not key=value (a __call__ argument)")
        out[key] = yaml.safe_load(value)
    return out


def _report(r: dict[str, Any]) -> str:
    lines = [f"pipeline      {r['pipeline']} (denoiser {r['denoiser']}; family entries: "
             f"{', '.join(r['family_entries'])})",
             f"prediction    {r['prediction']} on the {r['model_path']} path",
             f"time input    {r['time_input']}",
             f"levels        {r['levels']}",
             f"guidance      {r['guidance']} (guidance_scale {r['guidance_scale']}; "
             f"{r['cfg_calls']} calls)",
             f"latents       {r['latent']}, loop layout {r['loop_layout']}, "
             f"{tuple(r['latent_chw'])}",
             f"max abs diff  {r['diff']:.3g} of the latent std ({r['steps']} steps; tolerance "
             f"{r['tolerance']:g})",
             f"  with D(x, s) {r['diff_continuous_t']:.3g} (the continuous time input the "
             "recipes train through)"]
    if "decode" in r:
        d = r["decode"] if isinstance(r["decode"], str) else f"{r['decode']:.3g}"
        lines.append(f"decode        {d} (max abs vs the pipeline's images in [0, 1])")
    lines += [f"note          {n}" for n in r["notes"]]
    lines.append("not matched   " + ("; ".join(r["unmatched"]) or "nothing"))
    lines.append("PASSED" if r["passed"] else "FAILED: beyond tolerance")
    return "\n".join(lines)


def teacher_check_cmd(
    pipeline: Annotated[str, typer.Argument(help="a diffusers pipeline folder or hub id")],
    prompt: Annotated[list[str] | None, typer.Option(
        help="prompt (repeatable; default: 'a photo of a cat')")] = None,
    steps: Annotated[int | None, typer.Option(min=2, help="steps (default: the pipeline's)")
                     ] = None,
    guidance: Annotated[float | None, typer.Option(
        help="the pipeline's guidance_scale, in its own units (default: its own)")] = None,
    height: Annotated[int | None, typer.Option(min=8, help="image height (default: the "
                                               "pipeline's)")] = None,
    width: Annotated[int | None, typer.Option(min=8, help="image width (default: the "
                                              "pipeline's)")] = None,
    set_: Annotated[list[str] | None, typer.Option(
        "--set", help="more __call__ arguments, key=value (repeatable)")] = None,
    plugin: Annotated[list[str] | None, typer.Option(
        help="module registering family entries (repeatable)")] = None,
    dtype: Annotated[str, typer.Option(help="float32 | bfloat16 | float16")] = "float32",
    device: Annotated[str, typer.Option(help="cpu, cuda, ...")] = "cpu",
    seed: Annotated[int, typer.Option(help="seed of the pipeline's generator")] = 0,
    json_out: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Compare fewstep's teacher with the pipeline's own __call__ (exit 1 beyond tolerance)."""
    from fewstep.teachers.diffusers.adapter import check_pipeline_source, load_pipeline
    from fewstep.teachers.diffusers.teacher_check import teacher_check
    from fewstep.utils.registry import load_plugins

    if dtype not in ("float32", "bfloat16", "float16"):
        raise ConfigError(f"--dtype: {dtype!r} is not float32, bfloat16 or float16")
    if (height is None) != (width is None):
        raise ConfigError("--height / --width: give both or neither")
    load_plugins(plugin or [], "--plugin")
    kw = parse_call_kwargs(set_)
    if Path(pipeline).expanduser().exists():
        pipeline = str(Path(pipeline).expanduser().resolve())
    check_pipeline_source(pipeline, field="PIPELINE")
    pipe = load_pipeline(pipeline, dtype, field="PIPELINE").to(device)
    try:
        r = teacher_check(pipe, tuple(prompt or ("a photo of a cat",)), steps, guidance,
                          height, width, kw, seed)
    except ValueError as e:
        raise ConfigError(f"PIPELINE: {(str(e).splitlines() or [type(e).__name__])[0]}"
                          ) from None
    typer.echo(json.dumps(r, indent=1, default=str) if json_out else _report(r))
    if not r["passed"]:
        raise typer.Exit(EXIT_BEYOND_TOLERANCE)


__all__ = ["EXIT_BEYOND_TOLERANCE", "parse_call_kwargs", "teacher_check_cmd"]
