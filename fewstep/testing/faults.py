"""Simulated disk errors: a read-only folder and a full disk, in-process.

Tests run as root in CI containers, where ``chmod`` does not stop writes and no read-only bind
mount is available, so the operating system's refusal is simulated by patching the few ``os``
entry points every write goes through:

* :func:`refuse_writes` (``EROFS`` by default, or ``EACCES`` / ``EPERM``): creating, opening for
  writing, renaming into, deleting from or creating folders below ``under`` fails, as on a
  read-only mount. Reads still work.
* :func:`disk_full`: ``os.fsync`` of a file below ``under`` fails with ``ENOSPC`` -- the bytes
  were handed to the kernel but could not be stored, the moment a real full disk reports it
  for buffered writes. fewstep's atomic writer fsyncs every file before renaming it, so this
  exercises its clean-up path (no partial file may remain).

Both are context managers and restore everything on exit. A subprocess can apply them with
``python -c`` (see ``benchmarks/robustness/bad_inputs.py``).
"""

from __future__ import annotations

import builtins
import contextlib
import errno
import io
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


def _below(path: Any, root: Path) -> bool:
    try:
        p = Path(os.fsdecode(path)).expanduser().absolute()
    except (TypeError, ValueError):
        return False
    return p == root or root in p.parents


def _err(code: int, path: Any) -> OSError:
    return OSError(code, os.strerror(code), os.fsdecode(path))


@contextlib.contextmanager
def refuse_writes(under: str | os.PathLike[str], code: int = errno.EROFS) -> Iterator[None]:
    """Every write below ``under`` fails with ``code`` (see the module docstring)."""
    root = Path(under).expanduser().absolute()
    real_open, real_os_open = builtins.open, os.open
    saved: dict[str, Callable[..., Any]] = {}

    def os_open(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        if flags & _WRITE_FLAGS and _below(path, root):
            raise _err(code, path)
        return real_os_open(path, flags, *args, **kwargs)

    def b_open(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        if not isinstance(file, int) and any(c in mode for c in "wax+") and _below(file, root):
            raise _err(code, file)
        return real_open(file, mode, *args, **kwargs)

    def guard(name: str, n_paths: int) -> None:
        real = getattr(os, name)
        saved[name] = real

        def f(*args: Any, **kwargs: Any) -> Any:
            for p in args[:n_paths]:
                if _below(p, root):
                    raise _err(code, p)
            return real(*args, **kwargs)

        setattr(os, name, f)

    try:
        os.open = os_open
        builtins.open = io.open = b_open
        for name, n in (("mkdir", 1), ("replace", 2), ("rename", 2), ("unlink", 1),
                        ("remove", 1), ("rmdir", 1), ("truncate", 1), ("chmod", 1)):
            guard(name, n)
        yield
    finally:
        os.open = real_os_open
        builtins.open = io.open = real_open
        for name, f in saved.items():
            setattr(os, name, f)


@contextlib.contextmanager
def disk_full(under: str | os.PathLike[str]) -> Iterator[None]:
    """``os.fsync`` of any file below ``under`` fails with ``ENOSPC``."""
    root = Path(under).expanduser().absolute()
    real_fsync = os.fsync

    def fsync(fd: Any) -> None:
        n = fd if isinstance(fd, int) else fd.fileno()
        try:
            target = os.readlink(f"/proc/self/fd/{n}")
        except OSError:
            target = ""
        if target and _below(target, root) and not os.path.isdir(target):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), target)
        real_fsync(fd)

    os.fsync = fsync
    try:
        yield
    finally:
        os.fsync = real_fsync
