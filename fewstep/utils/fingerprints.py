"""Content fingerprints: what identifies a weights file, a model folder or a loaded module.

A fingerprint changes when the content changes -- never the path, which another file may take
over (a teacher replaced in place must not be served the old teacher's cached samples).

* :func:`file_fingerprint` (``sampled``, the default): sha256 over the file size, the raw
  safetensors header (names, dtypes, shapes, offsets, metadata) and, per tensor, its first
  4 KiB plus one 4 KiB block at an offset derived from the header (fixed for a file, not
  guessable from its name). Reads about 8 KiB per tensor, so a 12 GB teacher costs a few MB of
  reads. A replaced file, a fine-tune or a merged LoRA (each changes every value of a touched
  tensor) changes it; an edit confined to unsampled bytes of one tensor does not -- ``full``
  covers that case. Other files are hashed whole up to 16 MiB, larger ones by 64 sampled
  blocks spread over the file.
* ``full``: sha256 of every byte, memoised per ``(path, size, mtime, inode)`` in a JSON file
  (:data:`MEMO_PATH`; a file rewritten in place or replaced changes its mtime or inode, so a
  memo hit never serves a stale digest).
* :func:`folder_fingerprint`: every file below a folder (all components of a diffusers
  pipeline: denoiser, every text encoder, VAE, tokenizers, configs) by relative path.
* :func:`module_fingerprint`: the same sampling over a module's parameters and buffers in
  memory (teachers built in code, without files).

``FEWSTEP_FINGERPRINT=full`` (environment) makes ``full`` the default mode.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path
from typing import BinaryIO, Literal

import torch
from torch import nn

Mode = Literal["sampled", "full"]

#: bytes read per sampled block
BLOCK = 4096
#: where full digests are memoised (``FEWSTEP_FINGERPRINT_MEMO`` overrides)
MEMO_PATH = Path(os.environ.get("FEWSTEP_FINGERPRINT_MEMO",
                                "~/.cache/fewstep/fingerprints.json")).expanduser()
#: largest safetensors header read (the format allows 100 MB)
_MAX_HEADER = 100 * 2**20
#: other files up to this size are hashed whole; larger ones by a spread of sampled blocks
_WHOLE_MAX = 16 * 2**20
_SPREAD, _SPREAD_BLOCK = 64, 64 * 1024


def default_mode() -> Mode:
    """``full`` if ``FEWSTEP_FINGERPRINT=full`` is set, else ``sampled``."""
    return "full" if os.environ.get("FEWSTEP_FINGERPRINT", "").lower() == "full" else "sampled"


def _salted_offset(salt: bytes, name: str, length: int) -> int:
    """A fixed pseudo-random block start in ``[0, length - BLOCK]``."""
    h = hashlib.sha256(salt + name.encode()).digest()
    return int.from_bytes(h[:8], "little") % (length - BLOCK + 1)


def sha256_file(path: Path) -> str:
    """sha256 hex of a file's bytes, read in 4 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _safetensors_header(f: BinaryIO, size: int) -> tuple[int, bytes] | None:
    raw = f.read(8)
    if len(raw) < 8:
        return None
    n = int.from_bytes(raw, "little")
    if not 2 <= n <= min(_MAX_HEADER, size - 8):
        return None
    head = f.read(n)
    return (n, head) if len(head) == n and head[:1] == b"{" else None


def sampled_fingerprint(path: str | os.PathLike[str]) -> str:
    """The sampled fingerprint of one file (see the module docstring); a file that is not a
    safetensors file is hashed whole."""
    p = Path(path)
    size = p.stat().st_size
    h = hashlib.sha256(b"fewstep-sampled-v1")
    h.update(size.to_bytes(8, "little"))
    with open(p, "rb") as f:
        got = _safetensors_header(f, size) if p.suffix == ".safetensors" else None
        if got is None:
            f.seek(0)
            if size <= _WHOLE_MAX:
                for block in iter(lambda: f.read(1 << 22), b""):
                    h.update(block)
            else:  # a large non-safetensors file: fixed spread of sampled blocks
                for i in range(_SPREAD):
                    f.seek(i * (size - _SPREAD_BLOCK) // (_SPREAD - 1))
                    h.update(f.read(_SPREAD_BLOCK))
            return h.hexdigest()
        n, raw = got
        h.update(raw)
        try:
            header = json.loads(raw)
        except ValueError:
            header = {}
        salt = hashlib.sha256(raw).digest()
        base = 8 + n
        for name in sorted(k for k in header if k != "__metadata__"):
            try:
                start, end = (int(v) for v in header[name]["data_offsets"])
            except (KeyError, TypeError, ValueError):
                continue
            spots = [start]
            if end - start > BLOCK:
                spots.append(start + _salted_offset(salt, name, end - start))
            for s in spots:
                f.seek(base + s)
                h.update(f.read(min(BLOCK, end - s)))
    return h.hexdigest()


def _stat_key(st: os.stat_result) -> str:
    return f"{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}"


def full_fingerprint(path: str | os.PathLike[str], memo: Path | None = MEMO_PATH) -> str:
    """sha256 of every byte of ``path``, memoised in ``memo`` per ``(path, size, mtime,
    inode)`` (a memo that cannot be read or written is simply not used)."""
    p = Path(path).resolve()
    key = _stat_key(p.stat())
    table: dict[str, dict[str, str]] = {}
    if memo is not None:
        with contextlib.suppress(OSError, ValueError):
            loaded = json.loads(memo.read_text(encoding="utf-8"))
            table = loaded if isinstance(loaded, dict) else {}
        hit = table.get(str(p))
        if isinstance(hit, dict) and hit.get("stat") == key and isinstance(hit.get("sha256"),
                                                                           str):
            return hit["sha256"]
    digest = sha256_file(p)
    if memo is not None:
        table[str(p)] = {"stat": key, "sha256": digest}
        with contextlib.suppress(OSError):
            memo.parent.mkdir(parents=True, exist_ok=True)
            tmp = memo.with_name(f".{memo.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(table), encoding="utf-8")
            os.replace(tmp, memo)
    return digest


def file_fingerprint(path: str | os.PathLike[str], mode: Mode | None = None) -> str:
    """``sampled`` (default, see :func:`default_mode`) or ``full`` fingerprint of a file."""
    mode = mode or default_mode()
    if mode == "full":
        return "full:" + full_fingerprint(path)
    return "sampled:" + sampled_fingerprint(path)


def folder_fingerprint(folder: str | os.PathLike[str], mode: Mode | None = None,
                       skip: tuple[str, ...] = (".lock",)) -> str:
    """Every regular file below ``folder`` (hidden lock files skipped), by relative path."""
    root = Path(folder)
    h = hashlib.sha256(b"fewstep-folder-v1")
    for p in sorted(root.rglob("*")):
        if p.name in skip or not p.is_file():
            continue
        h.update(str(p.relative_to(root)).encode() + b"\0")
        h.update(file_fingerprint(p, mode).encode() + b"\0")
    return h.hexdigest()


def tensor_sample(t: torch.Tensor, salt: bytes, name: str) -> bytes:
    """Bytes of ``t`` the sampled fingerprint looks at: the first :data:`BLOCK` bytes and one
    block at a fixed pseudo-random offset (all of it when smaller)."""
    flat = t.detach().reshape(-1)
    if flat.numel() == 0:
        return b""
    item = flat.element_size()
    per = max(1, BLOCK // item)
    parts = [flat[:per]]
    if flat.numel() > per:
        start = _salted_offset(salt, name, flat.numel() * item) // item
        start = min(start, flat.numel() - per)
        parts.append(flat[start:start + per])
    out = b""
    for part in parts:
        c = part.to("cpu").contiguous()
        out += c.view(torch.uint8).numpy().tobytes() if c.dtype != torch.bool else \
            c.numpy().tobytes()
    return out


def module_fingerprint(module: nn.Module) -> str:
    """Sampled fingerprint of a module's parameters and buffers in memory: every tensor's
    name, dtype, shape and two sampled blocks (see :func:`tensor_sample`)."""
    h = hashlib.sha256(b"fewstep-module-v1")
    state = module.state_dict(keep_vars=False)
    names = sorted(state)
    salt = hashlib.sha256("\0".join(f"{k}:{tuple(state[k].shape)}" for k in names).encode()
                          ).digest()
    for k in names:
        t = state[k]
        if t.device.type == "meta":
            continue
        h.update(k.encode() + b"\0" + str(t.dtype).encode() + str(tuple(t.shape)).encode())
        h.update(tensor_sample(t, salt, k))
    return h.hexdigest()


__all__ = ["BLOCK", "MEMO_PATH", "default_mode", "file_fingerprint", "folder_fingerprint",
           "full_fingerprint", "module_fingerprint", "sampled_fingerprint", "sha256_file",
           "tensor_sample"]
