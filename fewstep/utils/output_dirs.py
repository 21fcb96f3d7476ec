"""Outputs that never destroy what fewstep did not write.

**Output folders** (``export``, ``sample``, ``demo``, ``teacher train``'s sample grids)::

    with output_folder(out, "export", overwrite=overwrite, inputs=[run_dir]) as tmp:
        ...  # write everything below tmp
    # now `out` is the complete new folder, with its manifest

Rules, checked before any work (:func:`check_output_dir`; a one-line
:class:`~fewstep.errors.ConfigError`, exit code 2):

* ``out`` absent, or an empty folder: written;
* ``out`` a complete previous output of the *same* command (its manifest verifies, or
  ``legacy(out)`` accepts a folder written before manifests existed): replaced;
* anything else -- a user's folder, a run folder, the folder holding the runs, a previous output
  with a file added -- refused, unless ``overwrite``: then it is replaced wholesale (never
  merged; the old content is deleted only after the new one is in place);
* ``out`` that is or holds one of the command's ``inputs``: refused, even with ``overwrite``.

Writing: into a fresh hidden sibling ``.fewstep-tmp-<8 hex>`` (same file system, so the renames
are atomic; a short name, so a valid 255-byte ``out`` stays valid), files get the usual mode
(``0666`` / ``0777`` less the umask) and are fsynced, and the manifest
(:mod:`fewstep.utils.output_manifest`: every file's size, sha256 and sampled fingerprint, the
command, ``extra``) is written last. Commit:
``renameat2(RENAME_EXCHANGE)`` swaps the two folders in one atomic step -- at every instant
``out`` is the complete old or the complete new folder -- then the old one (now at the temp
name) is deleted. Where the kernel or file system lacks the exchange, a journal
``.fewstep-swap-<hex>.json`` beside ``out`` names both folders before two renames, and
:func:`~fewstep.utils.folder_swap.recover` (run by the next writer) finishes an interrupted swap.

Locks: the writer holds the run lock (:class:`~fewstep.utils.run_lock.RunLock`) on ``out`` and
on its temp sibling for the whole command, so a second writer of ``out`` -- or a run training
in it -- is refused, and a live writer's temp folder is never taken for a killed writer's
leftover (those, unlocked, are deleted by the next writer in the same parent).

Readers call :func:`~fewstep.utils.output_manifest.verify_output` (manifest present, every
listed file present with its size and sampled fingerprint, no unlisted file; ``deep=True``
re-hashes every byte).

**Run folders** (``distill``) are long-lived and resumable, so they are written in place under
their run lock; :func:`replaced_run_contents` decides whether a fresh run may start there.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from fewstep.errors import ConfigError, FewstepError, WriteError, os_error_of, write_error
from fewstep.utils.files import name_max
from fewstep.utils.folder_swap import (
    OLD_PREFIX,
    TEMP_PREFIX,
    clean_stale,
    fsync_dir,
    recover,
    replace_folder,
)
from fewstep.utils.output_manifest import Incomplete, check_complete, read_manifest, write_manifest
from fewstep.utils.run_lock import LOCK_NAME, RunLock

#: files of a run folder (``distill``): a folder holding any of them holds a run
RUN_FILES = ("config.yaml", "student.safetensors", "losses.jsonl", "checkpoints")
#: ``out`` -> the temp folder of the :func:`output_folder` session writing it (see
#: :func:`deliver`)
_SESSIONS: dict[Path, Path] = {}


# -------------------------------------------------------------------------------- checks
def _holds(out: Path, inp: Path) -> bool:
    try:
        inp.resolve().relative_to(out.resolve())
        return True
    except (ValueError, OSError):
        return False


def _shown(entries: list[str]) -> str:
    return ", ".join(entries[:3]) + (", ..." if len(entries) > 3 else "")


def _absolute(out: str | os.PathLike[str]) -> Path:
    p = Path(out).expanduser()
    p = p if p.is_absolute() else Path.cwd() / p
    return p.parent.resolve() / p.name if p.name not in ("", ".", "..") else p.resolve()


def check_output_dir(out: str | os.PathLike[str], command: str, overwrite: bool = False,
                     inputs: Sequence[str | os.PathLike[str]] = (),
                     legacy: Callable[[Path], bool] | None = None,
                     field: str = "--out") -> str:
    """``"new"`` | ``"replace"`` (a previous output of ``command``) | ``"overwrite"``; a
    one-line :class:`ConfigError` when ``out`` may not be written (see the module
    docstring)."""
    out = _absolute(out)
    for i in inputs:
        if i is not None and _holds(out, Path(i).expanduser()):
            raise ConfigError(f"{field}: {out} holds an input of this command ({i}); writing "
                              "there would replace it -- choose another folder")
    if out.is_symlink():
        raise ConfigError(f"{field}: {out} is a symbolic link; give the folder itself")
    if not out.exists():
        return "new"
    if not out.is_dir():
        raise ConfigError(f"{field}: {out} is an existing file, expected a folder")
    entries = sorted(p.name for p in out.iterdir() if p.name != LOCK_NAME)
    if not entries:
        return "new"
    problem = ""
    if read_manifest(out) is not None:
        try:
            check_complete(out, command)
            return "replace"
        except Incomplete as e:
            problem = f"{e}; "
    elif legacy is not None:
        with contextlib.suppress(ValueError):
            if legacy(out):
                return "replace"
    if overwrite:
        return "overwrite"
    if problem:
        raise ConfigError(f"{field}: {problem}pass --overwrite to replace it, or choose "
                          "another folder")
    raise ConfigError(f"{field}: {out} is not empty ({_shown(entries)}) and is not an output "
                      f"of 'fewstep {command}'; choose a new or empty folder, or pass "
                      "--overwrite to replace it (everything in it is deleted)")


def _check_name(out: Path, field: str) -> None:
    limit = name_max(out.parent)
    for part in out.parts:
        if len(os.fsencode(part)) > limit:
            raise ConfigError(f"{field}: a name of {len(os.fsencode(part))} bytes in {out}; "
                              f"this file system allows {limit}")


@contextlib.contextmanager
def output_folder(out: str | os.PathLike[str], command: str, overwrite: bool = False,
                  inputs: Sequence[str | os.PathLike[str]] = (),
                  legacy: Callable[[Path], bool] | None = None,
                  extra: dict[str, Any] | Callable[[], dict[str, Any]] | None = None,
                  field: str = "--out", exchange: bool = True) -> Iterator[Path]:
    """Yield a fresh temp folder to write ``command``'s output into; on success write its
    manifest (with ``extra``, or what ``extra()`` returns then) and swap it in at ``out`` (see
    the module docstring). On any error the temp folder is deleted and ``out`` is unchanged;
    an OS error becomes a one-line :class:`~fewstep.errors.WriteError` (exit 3) naming
    ``out``."""
    out = _absolute(out)
    _check_name(out, field)
    check_output_dir(out, command, overwrite, inputs, legacy, field)  # before touching it
    existed = out.exists()
    lock_existed = (out / LOCK_NAME).exists()
    kept = "the previous output is unchanged" if existed else "nothing was written"
    dest = RunLock(out, enabled=True)
    dest.acquire()  # RunLockedError (exit 2): another writer, or a run training there
    ok = False
    try:
        recover(out)
        check_output_dir(out, command, overwrite, inputs, legacy, field)  # under the lock
        clean_stale(out.parent)
        try:
            tmp = out.parent / f"{TEMP_PREFIX}{secrets.token_hex(4)}"
            tmp.mkdir(mode=0o777)
        except OSError as e:
            raise write_error(e, out, kept) from None
        tmp_lock = RunLock(tmp, enabled=True)
        try:
            tmp_lock.acquire()
            _SESSIONS[out] = tmp
            yield tmp
            more = extra() if callable(extra) else extra
            write_manifest(tmp, command, more)
            replace_folder(tmp, out, exchange)
            ok = True
        except BaseException as e:
            shutil.rmtree(tmp, ignore_errors=True)
            if isinstance(e, WriteError):  # name the output, not its temp folder
                msg = str(e).replace(str(tmp), str(out)).split("; ")[0]
                raise WriteError(f"{msg}; {kept}") from None
            os_err = os_error_of(e) if isinstance(e, Exception) else None
            if os_err is not None and not isinstance(e, FewstepError):
                raise write_error(os_err, out, kept) from None
            raise
        finally:
            _SESSIONS.pop(out, None)
            tmp_lock.release()
    finally:
        dest.release()
        if not ok:
            if not lock_existed:
                with contextlib.suppress(OSError):
                    (out / LOCK_NAME).unlink()
            if not existed:
                with contextlib.suppress(OSError):
                    out.rmdir()


def deliver(folder: Path, out: str | os.PathLike[str], command: str) -> None:
    """Hand over a complete folder that a writer built elsewhere (e.g. a library's own temp
    folder) as the content of ``out``: into the running :func:`output_folder` session of
    ``out`` (which then commits it), or -- without one -- through a session of its own (the
    same checks: a foreign ``out`` is refused)."""
    out = _absolute(out)
    target = _SESSIONS.get(out)
    if target is None:
        with output_folder(out, command) as tmp:
            _move_entries(folder, tmp)
        return
    _move_entries(folder, target)


def _move_entries(src: Path, dst: Path) -> None:
    for p in sorted(src.iterdir()):
        if p.name != LOCK_NAME:
            os.rename(p, dst / p.name)
    shutil.rmtree(src, ignore_errors=True)


# ----------------------------------------------------------------------------- one file
def check_output_file(out: str | os.PathLike[str], is_ours: Callable[[Path], bool],
                      overwrite: bool, what: str, command: str, field: str = "--out") -> None:
    """A single-file output (``teacher train``, ``classifier train``, ``eval --out``): an
    existing file is replaced only if ``is_ours(path)`` (a fewstep file of the same kind),
    else refused unless ``overwrite``. The file itself is written atomically
    (:func:`~fewstep.utils.files.atomic_write_bytes`)."""
    p = _absolute(out)
    _check_name(p, field)
    if p.is_symlink() and not overwrite:
        raise ConfigError(f"{field}: {p} is a symbolic link; give the file itself, or pass "
                          "--overwrite")
    if not p.exists() or overwrite:
        return
    try:
        ours = bool(is_ours(p))
    except (OSError, ValueError):
        ours = False
    if not ours:
        raise ConfigError(f"{field}: {p} exists and is not {what} written by 'fewstep "
                          f"{command}'; choose another file, or pass --overwrite to replace "
                          "it")


# ---------------------------------------------------------------------------- run folders
@contextlib.contextmanager
def replaced_run_contents(run_dir: Path, resume: bool, overwrite: bool,
                          has_checkpoint: bool) -> Iterator[None]:
    """Whether a run may start in ``run_dir`` (call it holding the run lock):

    * empty or absent: yes;
    * ``resume``: yes if it holds a checkpoint, or the files of a run killed before its first
      checkpoint (it starts again); a finished run whose checkpoints are gone is refused;
    * a fresh run where a run (:data:`RUN_FILES`) or anything else is: refused (one line, exit
      2) unless ``overwrite``, which moves the old contents aside (a hidden sibling) and deletes
      them when the command ends -- a mistaken ``--overwrite`` killed early loses nothing yet.
    """
    entries = sorted(p.name for p in run_dir.iterdir() if p.name != LOCK_NAME) \
        if run_dir.is_dir() else []
    is_run = any(n in entries for n in RUN_FILES)
    finished = "student.safetensors" in entries
    if not entries or (resume and is_run and (has_checkpoint or not finished)):
        yield
        return
    if not overwrite:
        if is_run and has_checkpoint:
            ck = sorted(p.name for p in (run_dir / "checkpoints").glob("ckpt_*.safetensors"))
            raise ConfigError(f"--out: {run_dir} already holds checkpoints of a run (newest "
                              f"{ck[-1] if ck else '?'}); pass --resume to continue it, "
                              "--overwrite to start over, or choose another --out")
        if is_run and finished:
            raise ConfigError(f"--out: {run_dir} already holds a finished run "
                              "(student.safetensors) and no checkpoint to resume from; pass "
                              "--overwrite to start over, or choose another --out")
        if is_run:
            raise ConfigError(f"--out: {run_dir} already holds the files of a run that wrote "
                              "no checkpoint yet; pass --resume to start it again, --overwrite "
                              "to start over, or choose another --out")
        raise ConfigError(f"--out: {run_dir} is not empty ({_shown(entries)}) and holds no "
                          "fewstep run; choose a new or empty folder, or pass --overwrite to "
                          "replace its contents")
    clean_stale(run_dir.parent)
    aside = run_dir.parent / f"{OLD_PREFIX}{secrets.token_hex(4)}"
    lock = RunLock(aside, enabled=True)
    lock.acquire()
    moved: list[str] = []
    try:
        for name in entries:
            os.rename(run_dir / name, aside / name)
            moved.append(name)
        fsync_dir(run_dir)
    except OSError as e:
        for name in moved:  # put back what was moved: nothing is lost
            with contextlib.suppress(OSError):
                os.rename(aside / name, run_dir / name)
        if not any(p.name != LOCK_NAME for p in aside.iterdir()):
            shutil.rmtree(aside, ignore_errors=True)
        lock.release()
        raise write_error(e, run_dir, "the previous run's files are kept") from None
    try:
        yield
    finally:
        shutil.rmtree(aside, ignore_errors=True)
        lock.release()


__all__ = ["RUN_FILES", "check_output_dir", "check_output_file", "deliver", "output_folder",
           "replaced_run_contents"]
