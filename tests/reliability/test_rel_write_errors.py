"""OS errors on writes: one line naming the path and what was kept; never a partial file.

Tests run as root, where ``chmod`` does not stop writes, so a read-only folder and a full disk
are simulated in-process by :mod:`fewstep.testing.faults` (patched ``os`` entry points: the
same calls a real read-only mount or full disk would fail); ``/sys`` gives a real ``EPERM``.
"""

from __future__ import annotations

import errno
from pathlib import Path

import pytest
import torch

from fewstep.errors import EXIT_WRITE_ERROR, WriteError, error_exit
from fewstep.testing.faults import disk_full, refuse_writes
from fewstep.utils.files import atomic_write_bytes, load_tensors, save_tensors


def _no_temp_files(folder: Path) -> None:
    assert not [p.name for p in folder.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize(("code", "reason"), [(errno.EROFS, "Read-only file system"),
                                               (errno.EACCES, "Permission denied"),
                                               (errno.EPERM, "Operation not permitted")])
def test_refused_write_keeps_the_previous_file(tmp_path: Path, code: int, reason: str) -> None:
    path = tmp_path / "w.safetensors"
    save_tensors(path, {"a": torch.ones(3)}, "test")
    before = path.read_bytes()
    with refuse_writes(tmp_path, code), pytest.raises(WriteError) as e:
        save_tensors(path, {"a": torch.zeros(3)}, "test")
    msg = str(e.value)
    assert msg == f"cannot write {path}: {reason}; the previous file is unchanged"
    assert error_exit(e.value) == (EXIT_WRITE_ERROR, "error: " + msg)
    assert path.read_bytes() == before
    _no_temp_files(tmp_path)


def test_full_disk_leaves_no_partial_file(tmp_path: Path) -> None:
    new = tmp_path / "sub" / "new.bin"
    old = tmp_path / "old.bin"
    old.write_bytes(b"old")
    with disk_full(tmp_path):
        with pytest.raises(WriteError, match=r"new.bin: No space left on device; no file was "
                                             r"written$"):
            atomic_write_bytes(new, b"x" * 100_000)
        with pytest.raises(WriteError, match="the previous file is unchanged"):
            atomic_write_bytes(old, b"new content")
    assert not new.exists() and old.read_bytes() == b"old"
    _no_temp_files(tmp_path)
    _no_temp_files(tmp_path / "sub")
    atomic_write_bytes(new, b"ok")  # the disk has room again
    assert new.read_bytes() == b"ok"


def test_kernel_refuses_sys(tmp_path: Path) -> None:
    with pytest.raises(WriteError, match=r"^cannot write /sys/fewstep_test/x.bin: "):
        atomic_write_bytes("/sys/fewstep_test/x.bin", b"x")


def test_checkpoint_write_on_full_disk_keeps_earlier_checkpoints(tmp_path: Path) -> None:
    from fewstep.distill.engine.state import list_checkpoints, save_train_state

    ckpts = tmp_path / "checkpoints"
    net = torch.nn.Linear(2, 2)
    opt = torch.optim.AdamW(net.parameters())
    gens = {"data": torch.Generator().manual_seed(0)}
    save_train_state(ckpts / "ckpt_00000002.safetensors", {"m": net}, {"g": opt}, gens,
                     {"step": 2}, {})
    with disk_full(tmp_path), pytest.raises(WriteError, match="ckpt_00000004"):
        save_train_state(ckpts / "ckpt_00000004.safetensors", {"m": net}, {"g": opt}, gens,
                         {"step": 4}, {})
    assert [p.name for p in list_checkpoints(ckpts)] == ["ckpt_00000002.safetensors"]
    load_tensors(ckpts / "ckpt_00000002.safetensors", kind="train_state")
    _no_temp_files(ckpts)


def test_other_os_errors_map_to_exit_3_and_bugs_do_not() -> None:
    err = OSError(errno.ENOSPC, "No space left on device", "/data/run/tb/events")
    assert error_exit(err) == (EXIT_WRITE_ERROR, "error: /data/run/tb/events: No space left "
                                                 "on device")
    assert error_exit(ValueError("a bug")) is None
