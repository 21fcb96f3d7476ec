"""Output paths checked before any work: what may be written where (one-line errors, exit 2;
a write the operating system refuses is probed up front, exit 3).

* :func:`path_text`: a non-empty path without NUL bytes whose names fit the file system
  (:func:`check_name_lengths`: an over-long name is the input's fault, exit 2);
* :func:`output_dir` / :func:`output_file`: a folder / file to write (not a file where a folder
  is needed, nor below one); :func:`output_folder_target`: a folder written through a temp
  sibling (its parent is probed);
* :func:`writable`: probe that the operating system lets us write there (exit 3);
* which existing single files a command may replace without ``--overwrite``
  (:func:`is_teacher_file`, :func:`is_classifier_file`, :func:`is_metrics_json`).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path

from fewstep.errors import ConfigError, write_error
from fewstep.utils.files import check_regular, name_max

#: longest path (bytes, with the terminating NUL) Linux takes
MAX_PATH = 4096


def path_text(path: str | os.PathLike[str], field: str) -> Path:
    s = os.fspath(path)
    if not s.strip():
        raise ConfigError(f"{field}: must be a non-empty path")
    if "\x00" in s:
        raise ConfigError(f"{field}: must not contain a NUL byte")
    p = Path(s).expanduser()
    check_name_lengths(p, field)
    return p


def check_name_lengths(p: Path, field: str) -> None:
    """Every name in ``p`` within the file system's limit (``NAME_MAX``, usually 255 bytes) and
    the whole path within ``PATH_MAX``: an over-long name is the input's fault (exit 2), not a
    write the system refused."""
    limit = name_max(p.parent)
    for part in p.parts:
        n = len(os.fsencode(part))
        if n > limit:
            raise ConfigError(f"{field}: a name of {n} bytes in {str(p)[:80]}...; this file "
                              f"system allows {limit} bytes per name")
    total = len(os.fsencode(str(p.absolute())))
    if total >= MAX_PATH:
        raise ConfigError(f"{field}: the path is {total} bytes long; this system allows "
                          f"{MAX_PATH - 1}")


def _existing_file_ancestor(p: Path) -> Path | None:
    for a in [p, *p.parents]:
        if a.exists():
            return None if a.is_dir() else a
    return None


def output_dir(path: str | os.PathLike[str], field: str = "--out") -> Path:
    """A folder to write into: absent (it will be created) or an existing folder -- not an
    existing file, and not below one."""
    p = path_text(path, field)
    if p.exists() and not p.is_dir():
        raise ConfigError(f"{field}: {p} is an existing file, expected a folder")
    blocker = _existing_file_ancestor(p.parent)
    if blocker is not None:
        raise ConfigError(f"{field}: cannot create {p}: {blocker} is a file, not a folder")
    return p


def output_file(path: str | os.PathLike[str], field: str = "--out", suffix: str | None = None
                ) -> Path:
    """A file to write: absent or an existing file (replaced) -- not a folder, and not below
    a file."""
    p = path_text(path, field)
    if p.is_dir():
        raise ConfigError(f"{field}: {p} is a directory, expected a file")
    if suffix is not None and p.suffix != suffix:
        raise ConfigError(f"{field}: {p} must end in {suffix}")
    blocker = _existing_file_ancestor(p.parent)
    if blocker is not None:
        raise ConfigError(f"{field}: cannot create {p}: {blocker} is a file, not a folder")
    return p


def output_folder_target(out: str | os.PathLike[str], field: str = "--out") -> Path:
    """An output folder written through a temp sibling (:mod:`fewstep.utils.output_dirs`):
    absent or a folder, with a parent the operating system lets us write (probed: exit 3).
    Whether an existing folder may be replaced is decided by the command's output rules."""
    p = output_dir(out, field)
    writable(p.absolute().parent, is_dir=True)
    return p


def writable(path: str | os.PathLike[str], is_dir: bool = False) -> None:
    """Probe that the operating system lets us write ``path`` (a file, or a folder with
    ``is_dir``): create its folder and a temp file there, then remove the temp file and the
    folders the probe created (a command refused later leaves nothing behind).

    Raises :class:`~fewstep.errors.WriteError` (exit code 3) naming ``path`` -- before any
    work, instead of after it."""
    p = Path(path).expanduser()
    folder = p if is_dir else p.parent
    created = [d for d in (folder, *folder.parents) if not d.exists()]
    tmp = None
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".fewstep_probe.", suffix=".tmp", dir=folder)
        os.close(fd)
    except OSError as e:
        raise write_error(e, p, "nothing was written") from None
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        for d in created:  # innermost first
            with contextlib.suppress(OSError):
                d.rmdir()


def _safetensors_metadata(path: Path) -> dict[str, str]:
    from safetensors import safe_open

    check_regular(path, "--out")
    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except Exception:  # not a (complete) safetensors file: not ours
        return {}


def is_teacher_file(path: Path) -> bool:
    return _safetensors_metadata(path).get("fewstep_kind") == "denoiser"


def is_classifier_file(path: Path) -> bool:
    return _safetensors_metadata(path).get("format", "") in ("fewstep.digits_classifier.v1",
                                                            "fewstep.image_classifier.v1")


def is_metrics_json(path: Path) -> bool:
    """An ``eval`` output: a JSON object of samplers, each with its ``feature_space``."""
    check_regular(path, "--out")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and bool(data) and all(
        isinstance(v, dict) and "feature_space" in v for v in data.values())


__all__ = ["MAX_PATH", "check_name_lengths", "is_classifier_file", "is_metrics_json",
           "is_teacher_file", "output_dir", "output_file", "output_folder_target", "path_text",
           "writable"]
