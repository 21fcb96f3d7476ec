"""What a complete export holds, checked before it is read or replaced.

An export written by this fewstep carries the output manifest of
:mod:`fewstep.utils.output_dirs` (every file's size, sha256 and sampled fingerprint): a torn
file, a file of another export mixed in (a kill between two file commits of an older fewstep),
or a file added by hand is refused with one line. An export written before manifests existed
(*legacy*) is accepted only if it verifies as far as its own files allow: every weights file
its index names is present and a complete safetensors file, and nothing else is there.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from fewstep.errors import ConfigError
from fewstep.utils.output_manifest import read_manifest, verify_output

COMMAND = "export"
NATIVE_INDEX = "student_index.json"
DIFFUSERS_INFO = "fewstep_student.json"


def _complete_safetensors(path: Path) -> None:
    """``ValueError`` unless ``path`` is a safetensors file whose data exactly fill it."""
    if not path.is_file():
        raise ValueError(f"{path.name} is missing")
    size = path.stat().st_size
    with open(path, "rb") as f:
        raw = f.read(8)
        n = int.from_bytes(raw, "little") if len(raw) == 8 else -1
        if not 2 <= n <= size - 8:
            raise ValueError(f"{path} is torn (its header does not fit in {size} bytes)")
        try:
            header = json.loads(f.read(n))
        except ValueError:
            raise ValueError(f"{path} is torn (unreadable header)") from None
    ends = [int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"]
    if 8 + n + max(ends, default=0) != size:
        raise ValueError(f"{path} has {size} bytes, its header describes "
                         f"{8 + n + max(ends, default=0)} (torn)")


def _native_files(folder: Path, index: dict[str, Any]) -> set[str]:
    k = int(index["num_steps"])
    if index.get("mode") == "lora":
        return {"base/model.safetensors", *(f"step{i}/adapter.safetensors" for i in range(k))}
    return {f"step{i}/model.safetensors" for i in range(k)}


def legacy_export(folder: Path) -> bool:
    """``True`` for a complete export without a manifest, ``False`` for a folder that is not
    an export; ``ValueError`` naming the problem of an incomplete one."""
    folder = Path(folder)
    if (folder / NATIVE_INDEX).is_file():
        try:
            index = json.loads((folder / NATIVE_INDEX).read_text(encoding="utf-8"))
            want = _native_files(folder, index)
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{folder}/{NATIVE_INDEX} is unreadable ({e})") from None
        for rel in sorted(want):
            _complete_safetensors(folder / rel)
        have = {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()
                and p.name != ".lock"}
        extra = sorted(have - want - {NATIVE_INDEX})
        if extra:
            raise ValueError(f"{folder}: {extra[0]} is not part of this export")
        return True
    if (folder / DIFFUSERS_INFO).is_file():
        for p in sorted(folder.rglob("*.safetensors")):
            _complete_safetensors(p)
        return True
    return False


def verify_export(folder: str | os.PathLike[str], field: str = "--student") -> dict | None:
    """The manifest of a complete export (``None`` for a complete legacy one); a one-line
    :class:`~fewstep.errors.ConfigError` naming ``field`` otherwise."""
    folder = Path(folder)
    if read_manifest(folder) is None and not (folder / NATIVE_INDEX).is_file() and \
            not (folder / DIFFUSERS_INFO).is_file():
        raise ConfigError(f"{field}: {folder} is not an exported student ({DIFFUSERS_INFO} / "
                          f"{NATIVE_INDEX} missing); write one with 'fewstep export'")
    return verify_output(folder, COMMAND, field, legacy=legacy_export)


__all__ = ["legacy_export", "verify_export"]
