"""Output folders never lose what they did not write (fewstep.utils.output_dirs).

A forked writer replacing a 2-step output by a 3-step one SIGKILLs itself right before or
right after each of its file-system steps; afterwards the folder is the complete old or the
complete new output (checked byte for byte by the manifest, ``deep=True``), the unrelated file
beside it is intact, and the next writer cleans up and succeeds.
"""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path

import pytest

from fewstep.errors import ConfigError, RunLockedError
from fewstep.utils import folder_swap, output_dirs
from fewstep.utils.folder_swap import recover
from fewstep.utils.output_dirs import (
    check_output_file,
    deliver,
    output_folder,
    replaced_run_contents,
)
from fewstep.utils.output_manifest import Incomplete, check_complete
from fewstep.utils.run_lock import RunLock


def _write(folder: Path, tag: str, n: int) -> None:
    for i in range(n):
        (folder / f"step{i}").mkdir()
        (folder / f"step{i}" / "model.bin").write_bytes(tag.encode() * (1000 + i))
    (folder / "index.json").write_text(f'{{"tag": "{tag}", "steps": {n}}}')


def _produce(out: Path, tag: str, n: int, exchange: bool = True, **kw) -> None:
    with output_folder(out, "export", exchange=exchange, **kw) as tmp:
        _write(tmp, tag, n)


def _child(out: Path, kill_at: int, when: str, exchange: bool) -> int:
    """Fork a writer of B (3 steps) over A (2 steps) that kills itself at step ``kill_at``."""
    pid = os.fork()
    if pid:
        _, status = os.waitpid(pid, 0)
        return status
    count = {"n": 0}

    def wrap(mod: object, name: str) -> None:
        real = getattr(mod, name)

        def f(*a: object, **k: object) -> object:
            count["n"] += 1
            if count["n"] == kill_at and when == "before":
                os.kill(os.getpid(), signal.SIGKILL)
            r = real(*a, **k)
            if count["n"] == kill_at and when == "after":
                os.kill(os.getpid(), signal.SIGKILL)
            return r
        setattr(mod, name, f)

    for mod, name in ((os, "rename"), (folder_swap, "rename_exchange"), (shutil, "rmtree"),
                      (Path, "unlink"), (output_dirs, "write_manifest"), (Path, "mkdir")):
        wrap(mod, name)
    try:
        _produce(out, "B", 3, exchange)
    finally:
        os._exit(0 if count["n"] < kill_at else 3)


def _state(out: Path) -> str:
    with RunLock(out, enabled=True):
        recover(out)  # what the next writer does first (the journalled fallback only)
    m = check_complete(out, "export", deep=True)
    tag = (out / "index.json").read_text()
    assert len(m["files"]) == (3 if '"B"' in tag else 2) + 1
    return "new" if '"B"' in tag else "old"


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2", "two-renames"])
def test_every_kill_point_leaves_old_or_new(tmp_path: Path, exchange: bool) -> None:
    seen = {"old": 0, "new": 0}
    kill_at = 1
    while True:
        for when in ("before", "after"):
            base = tmp_path / f"k{kill_at}{when}"
            base.mkdir()
            (base / "unrelated.txt").write_text("keep")
            _produce(base / "out", "A", 2, exchange)
            status = _child(base / "out", kill_at, when, exchange)
            seen[_state(base / "out")] += 1
            assert (base / "unrelated.txt").read_text() == "keep"
            _produce(base / "out", "C", 1, exchange)  # the next writer cleans up, succeeds
            assert check_complete(base / "out", "export", deep=True)
            left = sorted(p.name for p in base.iterdir() if p.name.startswith(".fewstep-"))
            assert not left, left
        if os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0:
            break  # the writer finished before reaching kill_at: every step was covered
        kill_at += 1
    assert seen["old"] and seen["new"], seen


def test_foreign_folder_is_refused_and_untouched(tmp_path: Path) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("x")
    with pytest.raises(ConfigError, match=r"not empty.*--overwrite"):
        _produce(out, "A", 2)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def test_overwrite_replaces_a_foreign_folder_wholesale(tmp_path: Path) -> None:
    out = tmp_path / "mine"
    (out / "sub").mkdir(parents=True)
    (out / "notes.txt").write_text("x")
    _produce(out, "A", 2, overwrite=True)
    assert not (out / "notes.txt").exists() and not (out / "sub").exists()
    assert check_complete(out, "export", deep=True)


def test_a_previous_output_with_a_file_added_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "x"
    _produce(out, "A", 2)
    (out / "notes.txt").write_text("x")
    with pytest.raises(ConfigError, match=r"notes\.txt"):
        _produce(out, "B", 3)
    assert (out / "notes.txt").read_text() == "x"


def test_a_previous_output_is_replaced_exactly(tmp_path: Path) -> None:
    _produce(tmp_path / "x", "A", 3)
    _produce(tmp_path / "x", "B", 2)
    _produce(tmp_path / "fresh", "B", 2)
    names = sorted(str(p.relative_to(tmp_path / "x")) for p in (tmp_path / "x").rglob("*"))
    assert names == sorted(str(p.relative_to(tmp_path / "fresh"))
                           for p in (tmp_path / "fresh").rglob("*"))
    assert not (tmp_path / "x" / "step2").exists()


def test_an_output_of_another_command_is_refused(tmp_path: Path) -> None:
    with output_folder(tmp_path / "s", "sample") as tmp:
        (tmp / "grid.png").write_bytes(b"png")
    with pytest.raises(ConfigError, match="fewstep sample"):
        _produce(tmp_path / "s", "A", 1)


def test_out_holding_an_input_is_refused_even_with_overwrite(tmp_path: Path) -> None:
    (tmp_path / "runs" / "run1").mkdir(parents=True)
    with pytest.raises(ConfigError, match="holds an input"):
        _produce(tmp_path / "runs", "A", 1, overwrite=True,
                 inputs=[tmp_path / "runs" / "run1"])
    assert (tmp_path / "runs" / "run1").is_dir()


def test_mixed_and_torn_outputs_are_detected(tmp_path: Path) -> None:
    _produce(tmp_path / "a", "A", 2)
    _produce(tmp_path / "b", "B", 2)
    shutil.copy(tmp_path / "b" / "step0" / "model.bin", tmp_path / "a" / "step0" / "model.bin")
    with pytest.raises(Incomplete, match="replaced or mixed"):
        check_complete(tmp_path / "a", "export")
    f = tmp_path / "b" / "step1" / "model.bin"
    f.write_bytes(f.read_bytes()[:10])
    with pytest.raises(Incomplete, match="torn"):
        check_complete(tmp_path / "b", "export")


def test_a_failed_write_leaves_nothing_and_keeps_the_old(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError), output_folder(tmp_path / "new", "export") as tmp:
        _write(tmp, "A", 1)
        raise RuntimeError("boom")
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    _produce(tmp_path / "x", "A", 2)
    before = {str(p): p.read_bytes() for p in (tmp_path / "x").rglob("*") if p.is_file()}
    with pytest.raises(RuntimeError), output_folder(tmp_path / "x", "export"):
        raise RuntimeError("boom")
    assert before == {str(p): p.read_bytes() for p in (tmp_path / "x").rglob("*")
                      if p.is_file()}


def test_a_second_writer_of_one_folder_is_refused(tmp_path: Path) -> None:
    with output_folder(tmp_path / "x", "export") as tmp:
        _write(tmp, "A", 1)
        with pytest.raises(RunLockedError):
            _produce(tmp_path / "x", "B", 1)
    assert '"A"' in (tmp_path / "x" / "index.json").read_text()


def test_a_live_writers_temp_is_not_cleaned_by_a_neighbour(tmp_path: Path) -> None:
    with output_folder(tmp_path / "x", "export") as tmp:
        _write(tmp, "A", 1)
        _produce(tmp_path / "y", "B", 1)  # cleans stale temps in the same parent
        assert (tmp / "index.json").is_file()
    assert check_complete(tmp_path / "x", "export")


def test_outputs_follow_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        _produce(tmp_path / "x", "A", 1)
    finally:
        os.umask(old)
    assert (tmp_path / "x" / "step0" / "model.bin").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "x").stat().st_mode & 0o777 == 0o755


def test_valid_255_byte_name(tmp_path: Path) -> None:
    out = tmp_path / ("n" * 255)
    _produce(out, "A", 2)
    _produce(out, "B", 2)
    assert '"B"' in (out / "index.json").read_text()


def test_overlong_name_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="256 bytes"):
        _produce(tmp_path / ("n" * 256), "A", 1)


def test_deliver_hands_a_folder_to_the_session(tmp_path: Path) -> None:
    built = tmp_path / ".elsewhere"
    built.mkdir()
    _write(built, "A", 2)
    with output_folder(tmp_path / "x", "export"):
        deliver(built, tmp_path / "x", "export")
    assert not built.exists()
    assert check_complete(tmp_path / "x", "export", deep=True)


def test_single_file_outputs(tmp_path: Path) -> None:
    f = tmp_path / "m.json"
    f.write_text("my notes")
    with pytest.raises(ConfigError, match="--overwrite"):
        check_output_file(f, lambda p: False, False, "a metrics file", "eval")
    check_output_file(f, lambda p: True, False, "a metrics file", "eval")
    check_output_file(f, lambda p: False, True, "a metrics file", "eval")


def _run_folder(path: Path, checkpoints: bool, finished: bool) -> None:
    (path / "checkpoints").mkdir(parents=True)
    (path / "config.yaml").write_text("data: checkerboard\n")
    if checkpoints:
        (path / "checkpoints" / "ckpt_00000004.safetensors").write_bytes(b"x")
    if finished:
        (path / "student.safetensors").write_bytes(b"s")


@pytest.mark.parametrize("checkpoints,finished,resume,ok", [
    (True, True, False, False), (True, True, True, True), (False, True, False, False),
    (False, True, True, False), (False, False, True, True), (False, False, False, False)])
def test_run_folder_rules(tmp_path: Path, checkpoints: bool, finished: bool, resume: bool,
                          ok: bool) -> None:
    run = tmp_path / "run"
    _run_folder(run, checkpoints, finished)
    if ok:
        with replaced_run_contents(run, resume, False, checkpoints):
            pass
    else:
        with pytest.raises(ConfigError, match="--overwrite"), \
                replaced_run_contents(run, resume, False, checkpoints):
            pass
    assert (run / "config.yaml").is_file()


def test_run_folder_overwrite_keeps_the_old_until_the_end(tmp_path: Path) -> None:
    run = tmp_path / "run"
    _run_folder(run, True, True)
    with replaced_run_contents(run, False, True, True):
        assert not (run / "student.safetensors").exists()
        aside = [p for p in tmp_path.iterdir() if p.name.startswith(".fewstep-old-")]
        assert len(aside) == 1 and (aside[0] / "student.safetensors").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["run"]
