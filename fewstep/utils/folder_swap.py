"""Swap a complete folder into place atomically, and clean up after killed writers.

:func:`replace_folder` puts a finished temp folder at ``out``: ``renameat2(RENAME_EXCHANGE)``
exchanges the two folders in one atomic step (at every instant ``out`` is the complete old or
the complete new folder), then the old one -- now at the temp name -- is deleted. Where the
kernel or the file system lacks the exchange (other kernels, some network file systems), a
journal ``.fewstep-swap-<hex>.json`` beside ``out`` names both folders before two renames, and
:func:`recover`, run by the next writer, finishes a swap a kill interrupted.
:func:`clean_stale` deletes the temp folders of killed writers (unlocked ones only).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import secrets
import shutil
from pathlib import Path

from fewstep.errors import FewstepError
from fewstep.utils.run_lock import RunLock

TEMP_PREFIX = ".fewstep-tmp-"
OLD_PREFIX = ".fewstep-old-"
JOURNAL_PREFIX = ".fewstep-swap-"

_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def rename_exchange(a: Path, b: Path) -> None:
    """Atomically exchange two existing paths (``renameat2(..., RENAME_EXCHANGE)``); an
    :class:`OSError` (``ENOSYS`` / ``EINVAL`` / ``EOPNOTSUPP``) where it is not supported."""
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        raise OSError(errno.ENOSYS, "renameat2 is not available") from None
    if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e), str(a), None, str(b))


def fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _journals(parent: Path) -> list[Path]:
    return sorted(parent.glob(JOURNAL_PREFIX + "*.json"))


def recover(out: Path) -> None:
    """Finish swaps of ``out`` that a kill interrupted (journal fallback). Call it holding
    ``out``'s lock (which may have re-created ``out`` holding only the lock file).

    * the old folder is gone (killed before the first rename, or after the old one was
      deleted): ``out`` is complete (old or new); a leftover new folder is dropped;
    * old and new both exist (killed between the two renames, or during an earlier
      recovery): ``out`` was moved away, so the new folder's entries are moved into ``out``
      (those already there are kept: the move may have been interrupted before), then the
      old one is deleted;
    * only the old one exists (killed after the second rename): it is deleted.
    """
    for j in _journals(out.parent):
        try:
            rec = json.loads(j.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if not isinstance(rec, dict) or rec.get("out") != out.name:
            continue
        new, old = out.parent / str(rec.get("new")), out.parent / str(rec.get("old"))
        if not (new.name.startswith(TEMP_PREFIX) and old.name.startswith(OLD_PREFIX)):
            continue
        if old.is_dir() and new.is_dir():
            out.mkdir(exist_ok=True)
            for p in sorted(new.iterdir()):
                if not (out / p.name).exists():
                    os.rename(p, out / p.name)
            fsync_dir(out)
        for p in (new, old):
            shutil.rmtree(p, ignore_errors=True)
        j.unlink(missing_ok=True)
        fsync_dir(out.parent)


def replace_folder(tmp: Path, out: Path, exchange: bool = True) -> None:
    """Put the complete folder ``tmp`` at ``out`` atomically and delete what ``out`` held
    (see the module docstring). ``exchange=False`` forces the journalled fallback."""
    if not out.exists():
        os.rename(tmp, out)  # fails if someone created `out` meanwhile
        fsync_dir(out.parent)
        return
    if exchange:
        try:
            rename_exchange(tmp, out)
        except OSError as e:
            if e.errno not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EPERM):
                raise
        else:
            fsync_dir(out.parent)
            shutil.rmtree(tmp, ignore_errors=True)  # now the old folder
            return
    tag = secrets.token_hex(4)
    old = out.parent / f"{OLD_PREFIX}{tag}"
    journal = out.parent / f"{JOURNAL_PREFIX}{tag}.json"
    fd = os.open(journal, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump({"out": out.name, "new": tmp.name, "old": old.name}, f)
        f.flush()
        os.fsync(f.fileno())
    fsync_dir(out.parent)
    os.rename(out, old)
    os.rename(tmp, out)
    fsync_dir(out.parent)
    shutil.rmtree(old, ignore_errors=True)
    journal.unlink(missing_ok=True)
    fsync_dir(out.parent)


def clean_stale(parent: Path) -> None:
    """Delete temp / old folders in ``parent`` that killed writers left (unlocked ones only: a
    live writer holds the run lock of its own)."""
    try:
        entries = [p for p in parent.iterdir()
                   if p.name.startswith((TEMP_PREFIX, OLD_PREFIX)) and p.is_dir()
                   and not p.is_symlink()]
    except OSError:
        return
    for p in entries:
        lock = RunLock(p, enabled=True)
        try:
            lock.acquire()
        except FewstepError:  # a live writer's, or unwritable: leave it
            continue
        try:
            shutil.rmtree(p, ignore_errors=True)
        finally:
            lock.release()


__all__ = ["JOURNAL_PREFIX", "OLD_PREFIX", "TEMP_PREFIX", "clean_stale", "fsync_dir", "recover",
           "rename_exchange", "replace_folder"]
