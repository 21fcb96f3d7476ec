"""Every command answers bad input with one line and exit code 2, refused writes with 3.

In-process through :func:`fewstep.app.cli.run` (what ``fewstep`` runs); the full matrix over real
processes is ``python -m benchmarks.robustness.bad_inputs``.
"""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from fewstep.app.cli import run
from fewstep.data.registry import shipped_teacher
from fewstep.testing.faults import disk_full, refuse_writes


def _one_line(capsys: pytest.CaptureFixture[str], rc: int, want_rc: int, expect: str) -> str:
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == want_rc, err
    assert len(lines) == 1 and lines[0].startswith("error: ") and expect in lines[0], err
    assert "Traceback" not in err
    return lines[0]


@pytest.mark.parametrize(("argv", "expect"), [
    (["eval", "--data", "checkerboard", "--device", "cuda:7"], "--device"),
    (["eval", "--data", "checkerboard", "--seed", "-1"], "--seed"),
    (["eval", "--data", "checkerboard", "--samplers", "teacher_100000"], "--samplers"),
    (["eval", "--num", "10", "--data", "digits", "--teacher", "{ckT}"],
     "--teacher: the teacher was trained on 'checkerboard' but the data set is 'digits'"),
    (["sample", "--out", "{file}", "--data", "checkerboard"], "is an existing file"),
    (["sample", "--out", "{T}/s", "--teacher", "{T}"], "is a directory, expected a"),
    (["plan", "--gpu-memory-gb", "nan"], "--gpu-memory-gb"),
    (["plan", "--gpu-memory-gb", "-1"], "--gpu-memory-gb"),
    (["plan", "gan.layers=[99]"], "gan.layers: index 99 is out of range"),
    (["classifier", "train", "--out", "{T}", "--seed", "1"], "is a directory"),
    (["export", "--run", "{T}", "--out", "{T}/x"], "--run"),
    (["demo", "--out", "{file}"], "--out"),
])
def test_bad_input_is_one_line_exit_2(argv: list[str], expect: str, tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "a_file"
    f.write_text("x")
    fx = {"{T}": str(tmp_path), "{file}": str(f), "{ckT}": str(shipped_teacher("checkerboard"))}
    argv = [fx.get(a, a) for a in argv]
    _one_line(capsys, run(argv), 2, expect)


@pytest.mark.parametrize("fault", ["erofs", "eacces", "enospc"])
def test_refused_writes_are_one_line_exit_3(fault: str, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "m.json"
    out.write_text("{}")  # not a metrics file of fewstep eval: replaced only with --overwrite
    ctx = {"erofs": refuse_writes(tmp_path), "eacces": refuse_writes(tmp_path, errno.EACCES),
           "enospc": disk_full(tmp_path)}[fault]
    with ctx:
        rc = run(["eval", "--data", "checkerboard", "--num", "10", "--samplers", "teacher_2",
                  "--out", str(out), "--overwrite"])
    line = _one_line(capsys, rc, 3, str(out))
    assert out.read_text() == "{}"  # the previous file is kept
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    if fault == "enospc":
        assert "No space left on device; the previous file is unchanged" in line
