"""Safe, atomic file I/O: safetensors with a checksum and a JSON config in the metadata.

Every weights file fewstep writes is a single ``.safetensors`` file whose metadata holds

* ``fewstep_kind``: what the file is (``"denoiser"``, ``"classifier"``, ``"train_state"``, ...);
* ``config``: the JSON config that rebuilds the object;
* ``sha256``: a digest of all tensors (names, dtypes, shapes and bytes, in sorted order).

Files are written to a temporary file in the target folder, fsynced and renamed, so a crash
leaves either the old file or the new one, never a torn one. Nothing is ever unpickled.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import mmap
import os
import secrets
import stat
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save as st_save
from torch import Tensor

from fewstep.errors import CheckpointError, ConfigError, write_error

#: longest file name most file systems take (used when the folder cannot be asked)
DEFAULT_NAME_MAX = 255


def tensors_digest(tensors: Mapping[str, Tensor]) -> str:
    """sha256 over ``name, dtype, shape, bytes`` of every tensor, in sorted name order."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous()
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def name_max(folder: str | os.PathLike[str]) -> int:
    """The longest file name the file system of ``folder`` (or of its nearest existing
    ancestor) takes."""
    p = Path(folder)
    for a in (p, *p.parents):
        try:
            return int(os.pathconf(a, "PC_NAME_MAX"))
        except (OSError, ValueError):
            continue
    return DEFAULT_NAME_MAX


def temp_name(path: Path) -> str:
    """A fresh hidden temp name beside ``path``: ``.<name>.<hex>.tmp``, or the short
    ``.fewstep-<hex>.tmp`` when that would exceed the file system's name limit (a valid
    255-byte ``path`` must stay writable)."""
    tag = secrets.token_hex(4)
    long = f".{path.name}.{tag}.tmp"
    if len(os.fsencode(long)) <= name_max(path.parent):
        return long
    return f".fewstep-{tag}.tmp"


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temp file in the same folder, fsync, rename).

    An OS error (read-only file system, no space left, permission denied, ...) removes the
    temp file and raises :class:`~fewstep.errors.WriteError` naming ``path`` and what was
    kept: the previous ``path`` unchanged, or nothing. Never leaves a partial file. The file
    gets the usual mode (``0666`` less the umask).
    """
    path = Path(path)
    existed = path.exists()
    kept = "the previous file is unchanged" if existed else "no file was written"
    tmp: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = str(path.parent / temp_name(path))
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC,
                     0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
    except OSError as e:
        raise write_error(e, path, kept) from None
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
    try:
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:  # some filesystems do not support fsync on directories
        pass


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """:func:`atomic_write_bytes` of ``text`` encoded as UTF-8."""
    atomic_write_bytes(path, text.encode("utf-8"))


def strict_json(obj: object, indent: int | None = 2) -> str:
    """``json.dumps`` that refuses NaN / Inf (``ValueError``): what fewstep writes is JSON."""
    return json.dumps(obj, indent=indent, allow_nan=False)


def _kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISDIR(mode):
        return "a directory"
    return "not a regular file"


def open_regular(path: str | os.PathLike[str], field: str) -> int:
    """A read-only file descriptor of the regular file ``path``, opened without ever blocking:
    ``O_NONBLOCK`` (a FIFO without a writer would block a plain ``open``), ``fstat``, anything
    but a regular file refused, then blocking mode back. Raises a one-line
    :class:`~fewstep.errors.ConfigError` naming ``field`` and the path."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        raise ConfigError(f"{field}: cannot read {path}: {e.strerror or e}") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise ConfigError(f"{field}: {path} is {_kind(mode)}, not a regular file")
    os.set_blocking(fd, True)
    return fd


def check_regular(path: str | os.PathLike[str], field: str) -> None:
    """Refuse (one line) a ``path`` that exists but is not a regular file (FIFO, device,
    socket), without blocking on it."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return
    if not stat.S_ISREG(mode) and not stat.S_ISDIR(mode):
        raise ConfigError(f"{field}: {path} is {_kind(mode)}, not a regular file")


def read_regular_bytes(path: str | os.PathLike[str], field: str) -> bytes:
    """Every byte of the regular file ``path`` (:func:`open_regular`)."""
    with os.fdopen(open_regular(path, field), "rb") as f:
        try:
            return f.read()
        except OSError as e:
            raise ConfigError(f"{field}: cannot read {path}: {e.strerror or e}") from None


@contextlib.contextmanager
def os_errors_as_write_errors(path: str | os.PathLike[str], kept: str) -> Iterator[None]:
    """Inside the block, an :class:`OSError` becomes a :class:`~fewstep.errors.WriteError`
    naming ``path`` and ``kept`` (for writers fewstep does not control, e.g. image files)."""
    try:
        yield
    except OSError as e:
        raise write_error(e, path, kept) from None


def save_tensors(path: str | os.PathLike[str], tensors: Mapping[str, Tensor], kind: str,
                 config: Mapping[str, Any] | None = None,
                 extra: Mapping[str, str] | None = None) -> None:
    """Atomically write ``tensors`` with kind, JSON config and checksum in the metadata."""
    cpu = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    meta = {"fewstep_kind": kind, "config": json.dumps(dict(config or {}), sort_keys=True),
            "sha256": tensors_digest(cpu)}
    if extra:
        meta.update({k: str(v) for k, v in extra.items()})
    atomic_write_bytes(path, st_save(cpu, metadata=meta))


def read_metadata(path: str | os.PathLike[str]) -> dict[str, str]:
    """Metadata of a safetensors file, with a :class:`CheckpointError` for unreadable files."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path} is a directory, expected a file")
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except Exception as e:  # safetensors raises several types for torn / foreign files
        raise CheckpointError(f"{path} is not a readable safetensors file ({e})") from None


def load_tensors(path: str | os.PathLike[str], kind: str | None = None,
                 device: str | torch.device = "cpu") -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Load and verify a file written by :func:`save_tensors`.

    Returns ``(tensors, config)``. Raises :class:`CheckpointError` if the file is missing,
    truncated, of another kind, or its tensors do not match the stored checksum.
    """
    path = Path(path)
    meta = read_metadata(path)
    if kind is not None and meta.get("fewstep_kind") != kind:
        raise CheckpointError(f"{path} holds {meta.get('fewstep_kind')!r}, expected {kind!r}")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            # clone: get_tensor may return memory-mapped views, which would change (or fault)
            # if the file were rewritten in place after its checksum was verified
            tensors = {k: f.get_tensor(k).clone() for k in f.keys()}  # noqa: SIM118
    except Exception as e:
        raise CheckpointError(f"{path} is truncated or corrupted ({e})") from None
    want = meta.get("sha256")
    if want is not None and tensors_digest(tensors) != want:
        raise CheckpointError(f"{path} failed its checksum: the file was altered or corrupted")
    try:
        config = json.loads(meta.get("config", "{}"))
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path} has an unreadable config ({e})") from None
    return {k: v.to(device) for k, v in tensors.items()}, config


def load_state_into(module: torch.nn.Module, state: Mapping[str, Tensor], source: str) -> None:
    """``module.load_state_dict(state)`` with a :class:`CheckpointError` naming what mismatched."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shape = [k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
    if missing or unexpected or shape:
        parts = []
        if missing:
            parts.append(f"missing {missing[:3]}{'...' if len(missing) > 3 else ''}")
        if unexpected:
            parts.append(f"unexpected {unexpected[:3]}{'...' if len(unexpected) > 3 else ''}")
        if shape:
            k = shape[0]
            parts.append(f"shape of {k}: file {tuple(state[k].shape)} vs model "
                         f"{tuple(own[k].shape)}")
        raise CheckpointError(f"{source} does not fit the model: " + "; ".join(parts))
    module.load_state_dict(state)


# safetensors dtype names -> torch dtypes (the ones fewstep writes)
_ST_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16,
              "BF16": torch.bfloat16, "I64": torch.int64, "I32": torch.int32,
              "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool}


def mmap_safetensors(path: str | Path) -> dict[str, Tensor]:
    """Zero-copy CPU views of every tensor in a safetensors file, backed by a private memory
    map (pages are read on first access; nothing is copied up front; writes to a view stay
    private). Verify the file (e.g. :func:`load_tensors`, or a checksum over the views) before
    trusting its contents. A file replaced later (atomic rename, as fewstep writes) does not
    change the views: they map the old file; a file rewritten *in place* does change them."""
    with open(path, "rb") as f:
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
    n = int.from_bytes(mm[:8], "little")
    header = json.loads(mm[8:8 + n])
    out: dict[str, Tensor] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype = _ST_DTYPES[info["dtype"]]
        start, end = info["data_offsets"]
        shape = tuple(info["shape"])
        count = (end - start) // dtype.itemsize
        t = (torch.frombuffer(mm, dtype=dtype, count=count, offset=8 + n + start) if count
             else torch.empty(0, dtype=dtype))
        out[name] = t.view(shape)
    return out
