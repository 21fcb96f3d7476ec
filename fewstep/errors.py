"""Errors the command line reports as one line on stderr, without a traceback.

Exit codes (``fewstep`` and ``python -m fewstep.distill``):

====  ===========================================================================
0     done
2     bad input (:class:`FewstepError`: a config field, option, path or file that cannot be
      used), a run folder locked by another run, or a run that diverged
3     the operating system refused a write (:class:`WriteError`: read-only file system, no
      space left, permission denied, ...); the files already there are kept intact
130   interrupted by Ctrl-C before a checkpoint could be written
143   stopped by SIGTERM / SIGINT after writing a checkpoint (continue with ``--resume``)
====  ===========================================================================
"""

from __future__ import annotations

import errno
import os
import re
from pathlib import Path

EXIT_USER_ERROR = 2
EXIT_WRITE_ERROR = 3
EXIT_INTERRUPTED = 143


class FewstepError(Exception):
    """Base class: a problem with the user's input, not a bug (exit code 2)."""

    exit_code = EXIT_USER_ERROR


class ConfigError(FewstepError):
    """A config field is missing, unknown, of the wrong type or out of range."""


class CheckpointError(FewstepError):
    """A checkpoint or cache file is missing, truncated, corrupted or of the wrong shape."""


class DivergenceError(FewstepError):
    """A loss or gradient became NaN / Inf during training."""


class NonFiniteError(FewstepError):
    """A teacher or student produced NaN / Inf while sampling (named: the sampler and the
    first bad step)."""


class TrainingInterrupted(Exception):
    """Training stopped on request (SIGTERM / SIGINT) after writing a checkpoint (exit 143)."""

    def __init__(self, step: int, checkpoint: Path) -> None:
        super().__init__(f"training stopped at step {step}; checkpoint {checkpoint} (continue "
                         "with --resume)")
        self.step, self.checkpoint = step, checkpoint


class RunLockedError(FewstepError):
    """Another live process is running in the same run folder."""


class WriteError(FewstepError):
    """The operating system refused a write (exit code 3). The message names the path, the
    reason and what was kept (the previous file, or nothing: never a partial file)."""

    exit_code = EXIT_WRITE_ERROR


#: errno values that mean "the operating system refused this write" (exit code 3)
WRITE_ERRNOS = frozenset(
    getattr(errno, n) for n in ("EROFS", "ENOSPC", "EDQUOT", "EACCES", "EPERM", "EFBIG", "EIO",
                                "EEXIST", "EMFILE", "ENFILE", "ENOENT", "EXDEV", "ETXTBSY")
    if hasattr(errno, n))
#: errno values that mean "the path itself cannot name a file" (the input's fault: exit 2)
PATH_ERRNOS = frozenset(
    getattr(errno, n) for n in ("ENAMETOOLONG", "ELOOP", "ENOTDIR", "EISDIR")
    if hasattr(errno, n))

_OS_ERROR_RE = re.compile(r"os error (\d+)")


def os_reason(err: OSError) -> str:
    """``strerror`` of an OS error, e.g. ``No space left on device`` (or its text)."""
    if err.strerror:
        return err.strerror
    if err.errno is not None:
        return os.strerror(err.errno)
    return str(err) or type(err).__name__


def write_error(err: OSError, path: str | os.PathLike[str] | None = None,
                kept: str | None = None) -> FewstepError:
    """A :class:`WriteError` (exit 3) for ``err`` naming ``path`` (default: the error's own
    file name) and ``kept`` (what is left on disk, e.g. ``"the previous file is
    unchanged"``) -- or a :class:`ConfigError` (exit 2) when the path itself is at fault (a
    name too long, a file where a folder is needed: :data:`PATH_ERRNOS`)."""
    where = path if path is not None else (err.filename or "a file")
    msg = f"cannot write {where}: {os_reason(err)}"
    if kept:
        msg += f"; {kept}"
    return ConfigError(msg) if err.errno in PATH_ERRNOS else WriteError(msg)


def os_error_of(err: BaseException) -> OSError | None:
    """The :class:`OSError` ``err`` is or wraps: itself, or the ``(os error N)`` that
    safetensors' writer (a Rust library: its errors are not ``OSError`` s) reports."""
    if isinstance(err, OSError):
        return err
    if type(err).__name__ == "SafetensorError":
        m = _OS_ERROR_RE.search(str(err))
        if m is not None:
            n = int(m.group(1))
            return OSError(n, os.strerror(n))
    return None


def one_line(err: BaseException) -> str:
    """The error message on a single line (newlines and runs of spaces collapsed)."""
    return " ".join(str(err).split()) or type(err).__name__


def error_exit(err: BaseException) -> tuple[int, str] | None:
    """``(exit code, one-line message)`` for an error the command line reports without a
    traceback, or ``None`` for one that is a bug (let it raise).

    :class:`FewstepError` gives its ``exit_code``; an :class:`OSError` that escaped the
    write paths (e.g. from a third-party writer such as tensorboard or matplotlib) gives
    :data:`EXIT_WRITE_ERROR`, naming the file it concerns -- or :data:`EXIT_USER_ERROR` when
    the path is at fault (:data:`PATH_ERRNOS`: a name too long, a file where a folder is
    needed).
    """
    if isinstance(err, FewstepError):
        return err.exit_code, "error: " + one_line(err)
    os_err = os_error_of(err)
    if os_err is not None and os_err.errno in WRITE_ERRNOS | PATH_ERRNOS:
        where = os_err.filename if os_err.filename is not None else "a file"
        code = EXIT_USER_ERROR if os_err.errno in PATH_ERRNOS else EXIT_WRITE_ERROR
        return code, f"error: {where}: {os_reason(os_err)}"
    return None
