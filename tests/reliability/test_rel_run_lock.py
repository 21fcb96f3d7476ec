"""One run per folder: a live holder refuses a second run; a killed holder never blocks."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from fewstep.errors import RunLockedError
from fewstep.utils.run_lock import LOCK_NAME, RunLock

HOLD = """
import sys, time
from fewstep.utils.run_lock import RunLock
lock = RunLock(sys.argv[1], enabled=True)
lock.acquire()
print("locked", flush=True)
time.sleep(3600)
"""


def _holder(run: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(run)], stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "locked"  # waits for the lock, however long
    return proc


def test_second_lock_in_process_is_refused_naming_the_holder(tmp_path: Path) -> None:
    with RunLock(tmp_path, enabled=True) as first:
        assert first.held
        with pytest.raises(RunLockedError) as e:
            RunLock(tmp_path, enabled=True).acquire()
        msg = str(e.value)
        assert f"pid {os.getpid()}" in msg and socket.gethostname() in msg
        assert "started" in msg and str(tmp_path) in msg and "\n" not in msg
    with RunLock(tmp_path, enabled=True):  # released on exit: free again
        pass


def test_live_process_blocks_and_sigkilled_process_does_not(tmp_path: Path) -> None:
    proc = _holder(tmp_path)
    try:
        with pytest.raises(RunLockedError, match=rf"pid {proc.pid} on host"):
            RunLock(tmp_path, enabled=True).acquire()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert (tmp_path / LOCK_NAME).exists()  # the file is left behind by the killed holder...
    with RunLock(tmp_path, enabled=True) as lock:  # ...but does not block
        assert lock.read_holder()["pid"] == os.getpid()


def test_stale_record_without_flock_is_taken_over(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """File systems without flock: a record of a dead pid on this host is stale."""
    import errno
    import fcntl

    def no_flock(fd: int, op: int) -> None:
        raise OSError(errno.ENOLCK, "No locks available")

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / LOCK_NAME).write_text(
        f'{{"pid": {dead.pid}, "host": "{socket.gethostname()}", "started": "x"}}')
    monkeypatch.setattr(fcntl, "flock", no_flock)
    with RunLock(tmp_path, enabled=True) as lock:
        assert lock.read_holder()["pid"] == os.getpid()
    (tmp_path / LOCK_NAME).write_text(
        f'{{"pid": {os.getppid()}, "host": "{socket.gethostname()}", "started": "x"}}')
    with pytest.raises(RunLockedError, match=f"pid {os.getppid()}"):
        RunLock(tmp_path, enabled=True).acquire()


def test_non_zero_ranks_do_not_lock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RANK", "1")
    with RunLock(tmp_path) as lock:
        assert not lock.held
    monkeypatch.setenv("RANK", "0")
    with RunLock(tmp_path) as lock:
        assert lock.held


def test_distill_refuses_a_locked_run_folder(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    from fewstep.distill.__main__ import main as distill_main

    run = tmp_path / "run"
    with RunLock(run, enabled=True):
        for extra in ([], ["--resume"]):
            rc = distill_main(["--out", str(run), "--quiet", "data=checkerboard", *extra])
            err = capsys.readouterr().err.strip().splitlines()
            assert rc == 2 and len(err) == 1, err
            assert err[0].startswith(f"error: --out: {run} is in use by another run (pid "
                                     f"{os.getpid()} on host")
    assert not (run / "checkpoints").exists()
