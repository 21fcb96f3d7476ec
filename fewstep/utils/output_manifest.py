"""The manifest of an output folder: what marks fewstep's own outputs and proves them complete.

:func:`write_manifest` (last, after every file is written and fsynced) lists every file below
the folder -- size, sha256 and sampled fingerprint
(:func:`~fewstep.utils.fingerprints.sampled_fingerprint`) -- with the command that wrote it, in
``.fewstep-output.json``. :func:`check_complete` compares a folder with its manifest: a torn
file (size), a file of another output mixed in (sampled fingerprint: a few KiB read per
tensor), a missing or an added file; ``deep=True`` re-hashes every byte.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fewstep.errors import ConfigError
from fewstep.utils.fingerprints import sampled_fingerprint, sha256_file
from fewstep.utils.folder_swap import fsync_dir
from fewstep.utils.run_lock import LOCK_NAME

MANIFEST = ".fewstep-output.json"
FORMAT = "fewstep-output-v1"
#: entries at the top of an output folder that are not part of its content
IGNORED = (LOCK_NAME, MANIFEST)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _content(folder: Path) -> list[Path]:
    """Every file and symlink below ``folder`` except the manifest at its top and run-lock
    files (they hold no content: the holder of a lock, while one holds it)."""
    out = []
    for p in sorted(folder.rglob("*")):
        if p.name == LOCK_NAME or (p.parent == folder and p.name in IGNORED):
            continue
        if p.is_symlink() or not p.is_dir():
            out.append(p)
    return out


def write_manifest(folder: Path, command: str, extra: dict[str, Any] | None = None) -> dict:
    """Give every file the usual mode, fsync it, list it (size, sha256, sampled fingerprint)
    and write the manifest last; returns it."""
    mask = _umask()
    files: dict[str, dict[str, Any]] = {}
    for p in _content(folder):
        rel = str(p.relative_to(folder))
        if p.is_symlink():
            raise ConfigError(f"{folder}: {rel} is a symbolic link; outputs hold files only")
        os.chmod(p, 0o666 & ~mask)
        with open(p, "rb") as f:
            os.fsync(f.fileno())
        files[rel] = {"size": p.stat().st_size, "sha256": sha256_file(p),
                      "fingerprint": sampled_fingerprint(p)}
    for d in [folder, *(p for p in folder.rglob("*") if p.is_dir() and not p.is_symlink())]:
        os.chmod(d, 0o777 & ~mask)
    data = {"format": FORMAT, "command": command, "files": files, **(extra or {})}
    path = folder / MANIFEST
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o666 & ~mask)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1, sort_keys=True, allow_nan=False)
        f.flush()
        os.fsync(f.fileno())
    for d in {folder, *(folder / rel for rel in files)}:
        fsync_dir(d if d.is_dir() else d.parent)
    return data


def read_manifest(folder: Path) -> dict[str, Any] | None:
    """The manifest of ``folder`` (``None`` if absent or not one of ours)."""
    try:
        data = json.loads((Path(folder) / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("format") == FORMAT else None


class Incomplete(ValueError):
    """An output folder that is torn, mixed, or not an output of the expected command."""


def check_complete(folder: Path, command: str, deep: bool = False) -> dict[str, Any]:
    """The manifest of ``folder`` if it is a complete output of ``command``; else
    :class:`Incomplete` naming the first problem."""
    folder = Path(folder)
    m = read_manifest(folder)
    if m is None:
        raise Incomplete(f"{folder} is not a fewstep output (no {MANIFEST})")
    if m.get("command") != command:
        raise Incomplete(f"{folder} was written by 'fewstep {m.get('command')}', not "
                         f"'fewstep {command}'")
    listed = m.get("files")
    if not isinstance(listed, dict):
        raise Incomplete(f"{folder}/{MANIFEST} is unreadable")
    for rel, info in sorted(listed.items()):
        p = folder / rel
        if not p.is_file() or p.is_symlink():
            raise Incomplete(f"{folder}: {rel} is missing")
        size = p.stat().st_size
        if size != info.get("size"):
            raise Incomplete(f"{folder}: {rel} has {size} bytes, the manifest says "
                             f"{info.get('size')} (torn or replaced)")
        if deep:
            if sha256_file(p) != info.get("sha256"):
                raise Incomplete(f"{folder}: {rel} differs from the manifest (sha256)")
        elif sampled_fingerprint(p) != info.get("fingerprint"):
            raise Incomplete(f"{folder}: {rel} is not the file this output was written with "
                             "(replaced or mixed with another output)")
    extra = [str(p.relative_to(folder)) for p in _content(folder)
             if str(p.relative_to(folder)) not in listed]
    if extra:
        raise Incomplete(f"{folder}: {extra[0]} is not part of this output")
    return m


def verify_output(folder: str | os.PathLike[str], command: str, field: str,
                  legacy: Callable[[Path], bool] | None = None,
                  deep: bool = False) -> dict[str, Any] | None:
    """Read-side check of an output folder: its manifest (``None`` for a folder written before
    manifests existed that ``legacy`` accepts). Raises a one-line
    :class:`~fewstep.errors.ConfigError` naming ``field`` otherwise."""
    folder = Path(folder)
    if read_manifest(folder) is None and legacy is not None:
        try:
            if legacy(folder):
                return None
        except ValueError as e:
            raise ConfigError(f"{field}: {e}; write it again with 'fewstep {command}'"
                              ) from None
    try:
        return check_complete(folder, command, deep)
    except Incomplete as e:
        raise ConfigError(f"{field}: {e}; write it again with 'fewstep {command}'") from None


__all__ = ["FORMAT", "IGNORED", "MANIFEST", "Incomplete", "check_complete", "read_manifest",
           "verify_output", "write_manifest"]
