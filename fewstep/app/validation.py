"""Up-front checks of command-line inputs: each raises a one-line :class:`ConfigError` naming
the option (or config field) and the reason, before any work starts.

* paths: :func:`input_file`, :func:`input_dir`, and the output checks of
  :mod:`fewstep.app.output_paths` (:func:`output_dir`, :func:`output_file`,
  :func:`output_folder_target`, :func:`writable`; a folder where a file is expected is "is a
  directory, expected a file", not "not found"; an over-long name is exit 2);
* values: :func:`seed`, :func:`count`, :func:`sampler_steps`, :func:`plan_options`;
* devices: :func:`device` (unknown names and devices this machine does not have);
* models: :func:`models_fit` (teacher, student and data set of the same kind and shape).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from fewstep.app.output_paths import (
    is_classifier_file,
    is_metrics_json,
    is_teacher_file,
    output_dir,
    output_file,
    output_folder_target,
    path_text,
    writable,
)
from fewstep.errors import ConfigError
from fewstep.utils.config_files import MAX_SEED, parse_override
from fewstep.utils.output_dirs import check_output_file

#: largest sampler step count (a teacher_N sampler runs N network evaluations per sample)
MAX_SAMPLER_STEPS = 1000
#: largest sample count of ``sample`` / ``eval`` (the samples are held in memory at once)
MAX_SAMPLES = 1_000_000
#: most GPUs ``plan`` takes
MAX_GPUS = 100_000

_DEVICE_RE = re.compile(r"(cpu|cuda|mps)(?::(\d+))?")


def input_file(path: str | os.PathLike[str], field: str, suffix: str | None = None,
               what: str = "file") -> Path:
    """An existing, readable regular file (with ``suffix`` if given)."""
    p = path_text(path, field)
    if p.is_dir():
        raise ConfigError(f"{field}: {p} is a directory, expected a {what}")
    if not p.exists():
        raise ConfigError(f"{field}: {what} not found: {p}")
    if not p.is_file():
        raise ConfigError(f"{field}: {p} is not a regular file (expected a {what})")
    if suffix is not None and p.suffix != suffix:
        raise ConfigError(f"{field}: {p} must be a {suffix} {what}")
    if not os.access(p, os.R_OK):
        raise ConfigError(f"{field}: {p} is not readable (permission denied)")
    return p


def input_dir(path: str | os.PathLike[str], field: str, what: str = "folder") -> Path:
    """An existing folder."""
    p = path_text(path, field)
    if not p.exists():
        raise ConfigError(f"{field}: {what} not found: {p}")
    if not p.is_dir():
        raise ConfigError(f"{field}: {p} is a file, expected a {what}")
    return p


def seed(value: int, field: str = "--seed") -> int:
    """A seed every RNG takes: ``0 <= value <= 2**32 - 1``."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_SEED:
        raise ConfigError(f"{field}: {value!r} is out of range; a seed must lie in "
                          f"[0, {MAX_SEED}]")
    return value


def count(value: int, field: str, lo: int = 1, hi: int = MAX_SAMPLES) -> int:
    """An integer in ``[lo, hi]``."""
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ConfigError(f"{field}: {value!r} is out of range; must lie in [{lo}, {hi}]")
    return value


def sampler_steps(names: Iterable[str], field: str = "--samplers") -> list[str]:
    """Sampler names (``teacher_<N>`` / ``student_<K>``) with ``1 <= N <= MAX_SAMPLER_STEPS``.

    The names are parsed by :func:`fewstep.evaluation.evaluate.parse_sampler`; this adds the
    field name and the step bound (a huge N would run for ever, or overflow)."""
    out = []
    for raw in names:
        name = raw.strip()
        m = re.fullmatch(r"(teacher|student)_(\d+)(?:_(?:nc|naive))?", name)
        if not m:
            raise ConfigError(f"{field}: unknown sampler {name!r}; use teacher_<N> or "
                              "student_<K> (N, K >= 1; suffix _nc / _naive forces noise "
                              "correction on / off), comma-separated")
        steps = int(m.group(2))
        if steps < 1:
            raise ConfigError(f"{field}: sampler {name!r}: steps must be >= 1")
        if steps > MAX_SAMPLER_STEPS:
            raise ConfigError(f"{field}: sampler {name!r}: steps must be <= "
                              f"{MAX_SAMPLER_STEPS} (got {steps})")
        out.append(name)
    if not out:
        raise ConfigError(f"{field}: give at least one sampler")
    return out


def device(name: str, field: str = "--device") -> torch.device:
    """A device this machine has: ``cpu``, ``cuda[:i]`` (i < the number of GPUs) or ``mps``."""
    m = _DEVICE_RE.fullmatch(name.strip()) if isinstance(name, str) else None
    if m is None:
        raise ConfigError(f"{field}: unknown device {name!r}; use cpu, cuda, cuda:<index> or mps")
    kind, index = m.group(1), m.group(2)
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"{field}: {name!r} is not available on this machine (no CUDA); "
                              "use cpu")
        n = torch.cuda.device_count()
        if index is not None and int(index) >= n:
            raise ConfigError(f"{field}: {name!r} is not available (this machine has {n} "
                              f"CUDA device{'s' if n != 1 else ''}: cuda:0 .. cuda:{n - 1})")
    elif kind == "mps":
        if not torch.backends.mps.is_available():
            raise ConfigError(f"{field}: 'mps' is not available on this machine; use cpu")
        if index not in (None, "0"):
            raise ConfigError(f"{field}: {name!r}: there is one mps device (mps or mps:0)")
    elif index not in (None, "0"):
        raise ConfigError(f"{field}: {name!r}: there is one cpu device (cpu)")
    return torch.device(name.strip())


def plan_options(gpus: int, gpu_memory_gb: float | None) -> None:
    """``plan``'s machine description: ``1 <= gpus`` and a finite, positive memory size."""
    count(gpus, "--gpus", 1, MAX_GPUS)
    if gpu_memory_gb is not None and (not math.isfinite(gpu_memory_gb) or gpu_memory_gb <= 0):
        raise ConfigError(f"--gpu-memory-gb: {gpu_memory_gb!r} must be a finite number of GiB "
                          "> 0")


def _shape(cfg: Mapping[str, Any] | None) -> tuple[int, ...] | None:
    if not isinstance(cfg, Mapping):
        return None
    net = cfg.get("network")
    shape = net.get("data_shape") if isinstance(net, Mapping) else None
    try:
        return tuple(int(s) for s in shape) if shape is not None else None
    except (TypeError, ValueError):
        return None


def _classes(cfg: Mapping[str, Any] | None) -> int | None:
    net = cfg.get("network") if isinstance(cfg, Mapping) else None
    n = net.get("num_classes") if isinstance(net, Mapping) else None
    return int(n) if isinstance(n, int) else None


def models_fit(data: Any, data_shape: tuple[int, ...], num_classes: int,
               teacher_cfg: Mapping[str, Any] | None, teacher_field: str,
               student_cfg: Mapping[str, Any] | None = None,
               student_field: str = "--student") -> None:
    """Teacher, student and data set are of one kind: same data set (when recorded), same
    sample shape and number of classes. Diffusers-built teachers (no ``network`` config) are
    only checked by what they record."""
    want = tuple(data_shape)
    for cfg, field, what in ((teacher_cfg, teacher_field, "teacher"),
                             (None if student_cfg is None else student_cfg.get("denoiser"),
                              student_field, "student")):
        if cfg is None:
            continue
        rec = cfg.get("data") if isinstance(cfg, Mapping) else None
        if what == "student" and student_cfg is not None:
            rec = student_cfg.get("data", rec)
        if isinstance(rec, str) and rec in _builtin() and data in _builtin() and rec != data:
            raise ConfigError(f"{field}: the {what} was trained on {rec!r} but the data set is "
                              f"{data!r} (pass --data {rec}, or a {what} for {data})")
        shape = _shape(cfg)
        if shape is not None and shape != want:
            raise ConfigError(f"{field}: the {what} takes samples of shape {shape} but data "
                              f"{data!r} has shape {want}")
        nc = _classes(cfg)
        if nc is not None and nc != num_classes:
            raise ConfigError(f"{field}: the {what} has {nc} classes but data {data!r} has "
                              f"{num_classes}")
    if teacher_cfg is not None and student_cfg is not None:
        ts, ss = _shape(teacher_cfg), _shape(student_cfg.get("denoiser"))
        if ts is not None and ss is not None and ts != ss:
            raise ConfigError(f"{student_field}: the student takes samples of shape {ss} but "
                              f"the teacher ({teacher_field}) takes {ts}")


# ------------------------------------------------------------------ per command
# Each ``check_<command>`` validates that command's options up front (raising one
# ConfigError line, or a WriteError for an output the OS refuses) and is called first thing
# in the command.


def _builtin() -> tuple[str, ...]:
    from fewstep.data.problem import builtin_names

    return tuple(builtin_names())


def check_models_input(teacher: Path | None, student: Path | None, data: str | None,
                       samplers: list[str], num: int, seed_value: int, device_name: str,
                       min_num: int = 1) -> None:
    """``sample`` / ``eval``: sampler names, counts, seed, device, data name, model files."""
    sampler_steps(samplers)
    count(num, "--num", min_num, MAX_SAMPLES)
    seed(seed_value, "--seed")
    device(device_name, "--device")
    if teacher is not None:
        input_file(teacher, "--teacher", ".safetensors", "teacher file")
    if student is not None:
        input_file(student, "--student", ".safetensors", "student file")
    if student is None and any(s.strip().startswith("student_") for s in samplers):
        raise ConfigError("--samplers: a student_<K> sampler needs a student (--student FILE)")


def check_sample(out: Path, samplers: str, teacher: Path | None, student: Path | None,
                 data: str | None, num: int, seed_value: int, device_name: str,
                 prompt: list[str] | None) -> None:
    """``fewstep sample`` (an exported student folder is checked by its own loader)."""
    output_dir(out, "--out")
    exported = student is not None and Path(student).expanduser().is_dir()
    if prompt and not exported:
        raise ConfigError("--prompt: needs --student FOLDER (an exported text-to-image "
                          "student)")
    if exported:
        count(num, "--num", 1, MAX_SAMPLES)
        seed(seed_value, "--seed")
        device(device_name, "--device")
    else:
        check_models_input(teacher, student, data, samplers.split(","), num, seed_value,
                           device_name)
    output_folder_target(out)


def check_eval(out: Path | None, samplers: str, teacher: Path | None, student: Path | None,
               data: str | None, num: int, seed_value: int, device_name: str,
               overwrite: bool = False) -> None:
    """``fewstep eval`` (an existing ``--out`` must be an earlier ``eval`` output, unless
    ``overwrite``)."""
    if out is not None:
        output_file(out, "--out")
        check_output_file(out, is_metrics_json, overwrite, "a metrics file", "eval")
    check_models_input(teacher, student, data, samplers.split(","), num, seed_value,
                       device_name, min_num=10)
    if out is not None:
        writable(out)


def check_export(run: Path, out: Path, components: str, device_name: str) -> None:
    """``fewstep export``: a finished run folder, a folder to write, known options."""
    if components not in ("auto", "reference", "full", "copy"):
        raise ConfigError(f"--components: {components!r}; must be auto, reference or full")
    device(device_name, "--device")
    input_dir(run, "--run", "run folder")
    for name in ("config.yaml", "student.safetensors"):
        input_file(Path(run).expanduser() / name, "--run", what=f"finished run's {name}")
    output_folder_target(out)


def check_classifier_train(out: Path, seed_value: int, overwrite: bool = False) -> None:
    """``fewstep classifier train``."""
    output_file(out, "--out", ".safetensors")
    check_output_file(out, is_classifier_file, overwrite, "a classifier file",
                      "classifier train")
    seed(seed_value, "--seed")
    writable(out)


def check_teacher_train(out: Path, device_name: str, overwrite: bool = False) -> None:
    """``fewstep teacher train`` (the config itself is validated by its model)."""
    output_file(out, "--out", ".safetensors")
    check_output_file(out, is_teacher_file, overwrite, "a teacher file", "teacher train")
    device(device_name, "device")
    writable(out)


def check_run_out(out: Path | None) -> None:
    """``distill`` / ``demo``: the run folder (absent, or a folder) is writable."""
    if out is not None:
        output_dir(out, "--out")
        writable(out, is_dir=True)


def data_option(value: str | None) -> Any:
    """``--data``: a name / path, or a YAML mapping ``{path: ..., resolution: 16, ...}``."""
    if value is None or not value.strip().startswith("{"):
        return value
    return parse_override(f"data={value}")[1]
