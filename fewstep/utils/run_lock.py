"""One run per folder: an exclusive lock on ``<run_dir>/.lock`` held for the whole run.

``with RunLock(run_dir): ...`` takes ``fcntl.flock(LOCK_EX | LOCK_NB)`` on the open file
``.lock`` and writes the holder into it (``{"pid", "host", "started"}``, JSON). A second run on
the same folder -- fresh or ``--resume`` -- is refused with :class:`RunLockedError` naming the
holder. The operating system releases a ``flock`` when the process holding it exits, however
it exits (SIGKILL, power loss of a local disk), so a lock left behind by a killed run never
blocks ``--resume``: the file stays, but nobody holds it.

On file systems without ``flock`` (some network mounts answer ``ENOLCK`` / ``EOPNOTSUPP``) the
lock falls back to the holder record: a record written on this host by a process that no longer
runs is stale and taken over; a live one, or one from another host, refuses the run.

With several processes (``torchrun``), only the launcher's rank 0 takes the lock (``RANK`` /
``LOCAL_RANK`` unset or 0); the other ranks join the run rank 0 holds.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

from fewstep.errors import RunLockedError, write_error

LOCK_NAME = ".lock"
_NO_FLOCK = {errno.ENOLCK, errno.EOPNOTSUPP, getattr(errno, "ENOTSUP", errno.EOPNOTSUPP)}


def _holder() -> dict[str, Any]:
    return {"pid": os.getpid(), "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def _describe(h: dict[str, Any]) -> str:
    if not h:
        return "another process (its holder record is unreadable)"
    return (f"pid {h.get('pid', '?')} on host {h.get('host', '?')}, started "
            f"{h.get('started', '?')}")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def is_launcher_rank() -> bool:
    """True unless this is a non-zero rank of a multi-process launch."""
    return all(os.environ.get(k, "0") in ("", "0") for k in ("RANK", "LOCAL_RANK"))


class RunLock:
    """Exclusive lock on a run folder (see the module docstring). Re-entrant use is an error.

    Raises :class:`RunLockedError` (exit code 2) if another live process holds it and
    :class:`~fewstep.errors.WriteError` (exit code 3) if the lock file cannot be created.
    """

    def __init__(self, run_dir: str | os.PathLike[str], enabled: bool | None = None) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self.enabled = is_launcher_rank() if enabled is None else enabled
        self._fd: int | None = None

    def read_holder(self) -> dict[str, Any]:
        """The holder record in the lock file (``{}`` if absent or unreadable)."""
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def acquire(self) -> None:
        if not self.enabled or self._fd is not None:
            return
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise write_error(e, self.path, "nothing was written") from None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise self._locked(self.read_holder()) from None
            except OSError as e:
                if e.errno not in _NO_FLOCK:
                    raise
                self._check_record()
            self._write_holder(fd)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd

    def _check_record(self) -> None:
        """No ``flock`` here: refuse if the recorded holder is alive (or on another host)."""
        h = self.read_holder()
        pid = h.get("pid")
        if not isinstance(pid, int) or pid == os.getpid():
            return
        if h.get("host") != socket.gethostname() or _pid_alive(pid):
            raise self._locked(h)

    def _locked(self, holder: dict[str, Any]) -> RunLockedError:
        return RunLockedError(f"--out: {self.run_dir} is in use by another run "
                              f"({_describe(holder)}); wait for it to finish or stop it, or "
                              "choose another --out")

    def _write_holder(self, fd: int) -> None:
        data = (json.dumps(_holder()) + "\n").encode()
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, data, 0)
        except OSError as e:
            raise write_error(e, self.path, "nothing was written") from None

    def release(self) -> None:
        """Release the lock; the file stays (deleting it would race with a waiting locker)."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)  # no holder any more
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()


@contextlib.contextmanager
def reading_run(run_dir: str | os.PathLike[str], field: str = "--run") -> Iterator[None]:
    """Read a finished run: a shared ``flock`` on ``run_dir/.lock`` for the block, so a run
    still training there (it holds the exclusive lock) is refused with
    :class:`RunLockedError`, and a ``--resume`` cannot start while the run is read. A run
    without a lock file, or on a file system without ``flock``, is read without one."""
    path = Path(run_dir) / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        yield
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = RunLock(run_dir).read_holder()
            raise RunLockedError(f"{field}: {run_dir} is still training ({_describe(holder)});"
                                 " wait for it to finish (or stop it) before reading it"
                                 ) from None
        except OSError as e:
            if e.errno not in _NO_FLOCK:
                raise
        yield
    finally:
        os.close(fd)


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike[str]) -> Iterator[bool]:
    """Wait for an exclusive ``flock`` on ``folder/.lock`` (e.g. a shared teacher cache being
    built by another run: wait for it, then find its files done). Yields ``True`` when held,
    ``False`` when the folder cannot hold a lock file (read-only: nobody writes there)."""
    path = Path(folder) / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:
        yield False
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as e:
            if e.errno not in _NO_FLOCK:
                raise
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
