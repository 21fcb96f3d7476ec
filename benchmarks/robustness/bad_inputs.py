"""Malformed inputs across every command: each must end in one line on stderr, no traceback.

``python -m benchmarks.robustness.bad_inputs [--workers 2] [--only PREFIX] [--issue24]``
builds a few fixture files
(binary / Latin-1 / UTF-16 configs, folders where files are expected, a garbage weights file,
a checkerboard student, a finished run, a run folder holding checkpoints, a run folder locked
by this process, exports, a mixed and a torn export, NaN / huge / other teachers, FIFOs, YAML
bombs, label arrays, prompt files), then runs every case of
:mod:`benchmarks.robustness.bad_input_cases` as its own ``fewstep`` process (at most
``--workers`` at a time) and writes ``benchmarks/results/bad_inputs.json``:
``{"tried", "clean", "failures": [{"id", "argv", "rc", "stderr"}], "by_command", ...}``.

A case is clean when the process exits with the expected code -- 2 for bad input, 3 for a write
the operating system refused (:mod:`fewstep.errors`) -- within its time bound (no hang),
prints exactly one line on stderr that starts with ``error:`` and contains the case's expected
text, prints no traceback, and leaves every ``{copy:...}`` / ``{U}`` folder or file it was
given byte-identical (nothing lost).

Write errors: this runs as root in CI, where ``chmod`` does not stop writes. Cases marked
``fault`` run the command under :func:`fewstep.testing.faults.refuse_writes` (a read-only or
permission-denied folder, ``EROFS`` / ``EACCES``) or :func:`~fewstep.testing.faults.disk_full`
(``ENOSPC`` when a file is fsynced; ``enospc_open``: when it is created) applied in the child
process; ``/sys`` paths give a real
``EPERM`` from the kernel.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from benchmarks.robustness.bad_input_cases import CASES, NOTHING_LOST_CASES, Case
from fewstep.core.levels import student_sigmas
from fewstep.data.registry import shipped_teacher
from fewstep.export.run import export_run
from fewstep.student.student import Student
from fewstep.teachers.training import load_denoiser
from fewstep.utils.files import read_metadata, save_tensors
from fewstep.utils.output_dirs import output_folder
from fewstep.utils.run_lock import RunLock

ALL_CASES = CASES + NOTHING_LOST_CASES
#: address-space limit of ``aslimit`` cases (they must be refused before they allocate)
AS_LIMIT = 10 * 2**30

#: the child process: apply the case's fault (if any), then run the ``fewstep`` CLI
CHILD = """
import errno, sys
from contextlib import nullcontext
from pathlib import Path
import torch
torch.set_num_threads(1)
fault, where, module = sys.argv[1], sys.argv[2], sys.argv[3]
sys.argv = [module, *sys.argv[4:]]
ctx = nullcontext()
if fault in ("aslimit", "fsize"):
    import resource
    lim = {"aslimit": resource.RLIMIT_AS, "fsize": resource.RLIMIT_FSIZE}[fault]
    resource.setrlimit(lim, (int(where), int(where)))
elif fault != "none":  # (fewstep.testing imports the tiny diffusers fixtures: slow)
    from fewstep.testing.faults import disk_full, refuse_writes
    ctx = {"erofs": refuse_writes(where), "eacces": refuse_writes(where, errno.EACCES),
           "enospc": disk_full(where), "enospc_open": refuse_writes(where, errno.ENOSPC)}[fault]
with ctx:
    if module == "fewstep.distill":
        from fewstep.distill.__main__ import main as distill_main
        sys.exit(distill_main(sys.argv[1:]))
    from fewstep.app.cli import main
    main()
"""



def _student_config(teacher_cfg: dict[str, Any], sigmas: torch.Tensor) -> dict[str, Any]:
    spec = {"num_steps": 2, "parameterization": "decoupled", "transition": "fresh",
            "sigmas": None, "lora_rank": 16, "lora_alpha": None, "lora_targets": None}
    return {"denoiser": teacher_cfg, "student": spec, "sigmas": [float(s) for s in sigmas],
            "method": "turbo_pp", "data": "checkerboard"}


def make_fixtures(root: Path) -> dict[str, str]:
    """Files the cases refer to, as ``{placeholder: path}`` (``{T}`` is replaced by a fresh
    folder per case)."""
    f: dict[str, Path] = {"T": root}
    f["bin"] = root / "binary.yaml"
    f["bin"].write_bytes(b"\x7fELF\x02\x01\x01\x00\x00\x00train:\x00\xff\xfe")
    f["latin"] = root / "latin1.yaml"
    f["latin"].write_bytes("data: checkerboard\n# caf\u00e9 cr\u00e8me\n".encode("latin-1"))
    f["utf16"] = root / "utf16.yaml"
    f["utf16"].write_bytes("data: checkerboard\n".encode("utf-16"))
    f["dir"] = root / "a_folder"
    f["dir"].mkdir()
    f["dirst"] = root / "folder.safetensors"
    f["dirst"].mkdir()
    f["file"] = root / "a_file.txt"
    f["file"].write_text("just text\n")
    f["list"] = root / "list.yaml"
    f["list"].write_text("- a\n- b\n")
    f["badyaml"] = root / "bad.yaml"
    f["badyaml"].write_text("train: {lr: [\n")
    f["deep"] = root / "deep.yaml"
    f["deep"].write_text("a: " + "[" * 5000 + "]" * 5000 + "\n")
    f["teacher_yaml"] = root / "teacher.yaml"
    f["teacher_yaml"].write_text("data: checkerboard\nsteps: 10\n")
    f["distill_yaml"] = root / "distill.yaml"
    f["distill_yaml"].write_text("data: checkerboard\ntrain:\n  iterations: 1\n")
    f["garbage"] = root / "garbage.safetensors"
    f["garbage"].write_bytes(b"\x00\x01 this is not a safetensors file" * 10)
    f["ckT"], f["dgT"] = shipped_teacher("checkerboard"), shipped_teacher("digits")
    den, tcfg = load_denoiser(f["ckT"])
    sig = student_sigmas(2, 8, float(tcfg.get("sampling", {}).get("shift", 1.0)))
    student = Student(den, sig, "decoupled", "fresh")
    f["ckS"] = root / "student_checkerboard.safetensors"
    save_tensors(f["ckS"], student.state_dict(), "student", _student_config(tcfg, sig))
    run_cfg = {"data": "checkerboard", "method": "turbo_pp", "cache": {"dir": str(root / "c")}}
    f["run"] = root / "finished_run"
    f["run"].mkdir()
    (f["run"] / "config.yaml").write_text(yaml.safe_dump(run_cfg))
    save_tensors(f["run"] / "student.safetensors", student.state_dict(), "student",
                 _student_config(tcfg, sig))
    f["badrun"] = root / "run_latin1_config"
    f["badrun"].mkdir()
    (f["badrun"] / "config.yaml").write_bytes(b"data: checkerboard # \xe9\xe8\n")
    save_tensors(f["badrun"] / "student.safetensors", student.state_dict(), "student",
                 _student_config(tcfg, sig))
    f["garbagerun"] = root / "run_garbage_student"
    f["garbagerun"].mkdir()
    (f["garbagerun"] / "config.yaml").write_text(yaml.safe_dump(run_cfg))
    (f["garbagerun"] / "student.safetensors").write_bytes(b"garbage" * 20)
    f["ckrun"] = root / "run_with_checkpoints"
    (f["ckrun"] / "checkpoints").mkdir(parents=True)
    (f["ckrun"] / "checkpoints" / "ckpt_00000005.safetensors").write_bytes(b"x")
    f["locked"] = root / "run_locked"
    f["ro"] = root / "read_only"
    f["ro"].mkdir()
    f["full"] = root / "full_disk"
    f["full"].mkdir()
    f.update(nothing_lost_fixtures(root, f, den, tcfg, sig, student, run_cfg))
    return {k: str(v) for k, v in f.items()}


def _rewrite_teacher(src: Path, dst: Path, tensors_fn: Any = None, config_fn: Any = None
                     ) -> Path:
    """A copy of a denoiser file with its tensors / config changed (checksum recomputed)."""
    from fewstep.utils.files import load_tensors

    tensors, config = load_tensors(src, kind="denoiser")
    if tensors_fn is not None:
        tensors_fn(tensors)
    if config_fn is not None:
        config_fn(config)
    save_tensors(dst, tensors, "denoiser", config)
    return dst


def _bomb(levels: int = 9, width: int = 9) -> list[str]:
    lines = ["a0: &a0 [" + ",".join(['"x"'] * width) + "]"]
    for i in range(1, levels + 1):
        lines.append(f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * width) + "]")
    return lines


def _images(folder: Path, n: int, seed: int = 0) -> Path:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(
            folder / f"{i:03d}.png")
    return folder


def nothing_lost_fixtures(root: Path, f: dict[str, Path], den: Any, tcfg: dict[str, Any],
                          sig: torch.Tensor, student: Student, run_cfg: dict[str, Any]
                          ) -> dict[str, Path]:
    """Fixtures of :data:`~benchmarks.robustness.bad_input_cases.NOTHING_LOST_CASES`."""
    g: dict[str, Path] = {}
    ck_id = "sha256:" + read_metadata(f["ckT"])["sha256"]
    scfg = {**_student_config(tcfg, sig), "teacher_fingerprint": ck_id}
    save_tensors(f["ckS"], student.state_dict(), "student", scfg)  # records its teacher
    save_tensors(f["run"] / "student.safetensors", student.state_dict(), "student", scfg)
    # configs
    for name, text in (("dup", "data: checkerboard\ntrain:\n  batch_size: 0\nmethod: turbo_pp\n"
                                "train:\n  iterations: 3\n"),
                       ("dup2", "data: checkerboard\ntrain:\n  lr: 0.1\n  lr: 0.0001\n"),
                       ("bomb", "\n".join(_bomb()) + "\ndata: checkerboard\n"),
                       ("tbomb", "data: checkerboard\n" + "\n".join(_bomb()) + "\n"),
                       ("boolfile", "data: checkerboard\ntrain: {batch_size: true}\n")):
        g[name] = root / f"{name}.yaml"
        g[name].write_text(text)
    flow = "[&a0 [" + ",".join(["x"] * 9) + "]" + "".join(
        f", &a{i} [" + ",".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 10)) + "]"
    g["flowbomb"] = Path(flow)  # (a value, not a file)
    # data and text files
    g["imgs"] = _images(root / "imgs", 24)
    g["imgs_fifo"] = _images(root / "imgs_fifo", 24)
    os.mkfifo(g["imgs_fifo"] / "zz_fifo.png")
    for name, fname in (("fifo_npy", "fifo.npy"), ("fifo_yaml", "fifo.yaml"),
                        ("fifo_prompts", "prompts_fifo.txt")):
        g[name] = root / fname
        os.mkfifo(g[name])
    g["prompts_latin1"] = root / "prompts_latin1.txt"
    g["prompts_latin1"].write_bytes(b"a caf\xe9 cr\xe8me\na dog\n")
    g["prompts_bin"] = root / "prompts_bin.txt"
    g["prompts_bin"].write_bytes(bytes(range(128, 192)))
    x = np.random.default_rng(0).integers(0, 256, (20, 1, 8, 8), dtype=np.uint8)
    g["huge_label"] = root / "huge_label.npz"
    np.savez(g["huge_label"], x=x, y=np.array([0] * 19 + [10**9]))
    g["u64_label"] = root / "u64_label.npz"
    np.savez(g["u64_label"], x=x, y=np.array([0] * 19 + [2**63 + 5], dtype=np.uint64))
    (root / "badfeat.py").write_text(
        "import torch\n"
        "def feats(device):  # fewstep calls it with no arguments\n"
        "    return torch.nn.Flatten()\n"
        "class Two(torch.nn.Module):\n"
        "    def forward(self, x, extra):\n"
        "        return x.flatten(1)\n"
        "def two_inputs():\n"
        "    return Two()\n")
    # teachers
    g["nanT"] = _rewrite_teacher(f["ckT"], root / "nan_teacher.safetensors",
                                 lambda t: t[sorted(t)[0]].fill_(float("nan")))
    g["negshiftT"] = _rewrite_teacher(f["ckT"], root / "negshift_teacher.safetensors",
                                      config_fn=lambda c: c["sampling"].update(shift=-1.0))
    g["hugeT"] = _rewrite_teacher(f["ckT"], root / "huge_teacher.safetensors",
                                  config_fn=lambda c: c["network"].update(hidden=10**9))
    g["otherT"] = _rewrite_teacher(f["ckT"], root / "other_teacher.safetensors",
                                   lambda t: [v.mul_(1.01) for v in t.values()
                                              if v.is_floating_point()])
    inf = {k: v.clone() for k, v in student.state_dict().items()}
    k0 = sorted(k for k in inf if inf[k].is_floating_point())[0]
    inf[k0].fill_(float("inf"))
    g["infS"] = root / "student_inf.safetensors"
    save_tensors(g["infS"], inf, "student", scfg)
    from fewstep.teachers.training import NetworkConfig, TeacherConfig, train_teacher

    g["imgsT"] = root / "imgs_teacher.safetensors"
    train_teacher(TeacherConfig(data=str(g["imgs"]), steps=2, network=NetworkConfig(
        hidden=32, depth=1, emb=16)), g["imgsT"], progress=False)
    # runs and exports
    g["run_b"] = root / "finished_run_b"
    g["run_b"].mkdir()
    (g["run_b"] / "config.yaml").write_text(yaml.safe_dump(run_cfg))
    other = {k: (v * 1.5 if v.is_floating_point() else v) for k, v in student.state_dict().items()}
    save_tensors(g["run_b"] / "student.safetensors", other, "student", scfg)
    g["locked_run"] = root / "finished_run_locked"
    shutil.copytree(f["run"], g["locked_run"])
    g["runs"] = root / "runs"
    shutil.copytree(f["run"], g["runs"] / "run")
    shutil.copytree(g["run_b"], g["runs"] / "sibling")
    g["exp_a"], exp_b = root / "exp_a", root / "exp_b"
    export_run(f["run"], g["exp_a"])
    export_run(g["run_b"], exp_b)
    g["exp_added"] = root / "exp_added"
    shutil.copytree(g["exp_a"], g["exp_added"])
    (g["exp_added"] / "notes.txt").write_text("my notes\n")
    g["exp_mixed"] = root / "exp_mixed"  # what a kill between two file commits used to leave
    shutil.copytree(g["exp_a"], g["exp_mixed"])
    shutil.copy2(exp_b / "step0" / "model.safetensors", g["exp_mixed"] / "step0")
    g["exp_torn"] = root / "exp_torn"
    shutil.copytree(g["exp_a"], g["exp_torn"])
    torn = g["exp_torn"] / "step1" / "model.safetensors"
    torn.write_bytes(torn.read_bytes()[: torn.stat().st_size // 2])
    g["exp_legacy_torn"] = root / "exp_legacy_torn"  # written before manifests existed
    shutil.copytree(g["exp_torn"], g["exp_legacy_torn"])
    (g["exp_legacy_torn"] / ".fewstep-output.json").unlink()
    g["fsize"] = Path(str(max(p.stat().st_size for p in g["exp_a"].rglob("*.safetensors"))
                          // 2))
    with output_folder(root / "sample_out", "sample") as tmp:
        (tmp / "grid.png").write_bytes(b"\x89PNG fixture")
    g["sample_out"] = root / "sample_out"
    # a user's things
    g["notes"] = root / "my_notes.json"
    g["notes"].write_text('{"my": "notes"}\n')
    g["user_st"] = root / "my_weights.safetensors"
    from safetensors.torch import save_file

    save_file({"w": torch.ones(3)}, str(g["user_st"]))
    g["grids_parent"] = root / "grids_parent"
    (g["grids_parent"] / "t_samples").mkdir(parents=True)
    (g["grids_parent"] / "t_samples" / "notes.txt").write_text("my notes\n")
    return g


def _fill(s: str, fx: dict[str, str]) -> str:
    for k, v in fx.items():
        s = s.replace("{" + k + "}", v)
    return s


def _tree(path: Path) -> dict[str, bytes]:
    """Relative path -> bytes of every file (``path`` itself if it is a file; lock files,
    which hold no content, left out)."""
    if path.is_file():
        return {"": path.read_bytes()}
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*"))
            if p.is_file() and p.name != ".lock"}


def _copies(argv: list[str], fx: dict[str, str], own: Path) -> tuple[list[str], dict[Path, Any]]:
    """``{copy:NAME}`` -> a fresh copy of fixture NAME in the case folder; ``{U}`` -> a fresh
    user folder. Returns the argv and the trees they must keep."""
    keep: dict[Path, Any] = {}
    out = []
    for a in argv:
        for name in re.findall(r"{copy:(\w+)}", a):
            src = Path(fx[name])
            dst = own / f"copy_{name}{src.suffix if src.is_file() else ''}"
            if not dst.exists():
                (shutil.copytree if src.is_dir() else shutil.copy2)(src, dst)
                keep[dst] = _tree(dst)
            a = a.replace("{copy:" + name + "}", str(dst))
        if "{U}" in a:
            u = own / "user_folder"
            if not u.exists():
                (u / "sub").mkdir(parents=True)
                (u / "notes.txt").write_text("my notes\n")
                (u / "sub" / "weights.bin").write_bytes(b"\x01" * 1000)
                keep[u] = _tree(u)
            a = a.replace("{U}", str(u))
        out.append(a)
    return out, keep


def run_case(case: Case, fx: dict[str, str], timeout: float) -> dict[str, Any]:
    # {T} is a fresh folder per case (outputs of one case never meet another's)
    own = Path(fx["T"]) / "cases" / case.id.replace("/", "__")
    own.mkdir(parents=True)
    argv, keep = _copies(list(case.argv), fx, own)
    argv = [_fill(a, {**fx, "T": str(own)}) for a in argv]
    where = {"erofs": fx["ro"], "eacces": fx["ro"], "aslimit": str(AS_LIMIT),
             "fsize": fx["fsize"]}.get(case.fault, fx["full"])
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1",
               COLUMNS="100", HF_HUB_OFFLINE="1",
               PYTHONPATH=os.pathsep.join([os.environ.get("PYTHONPATH", ""), fx["T"]]))
    timeout = case.timeout or timeout
    cmd = [sys.executable, "-c", CHILD, case.fault, where, case.module, *argv]
    t0 = time.perf_counter()
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout,
                             cwd=own)
        rc, out, err = res.returncode, res.stdout, res.stderr
    except subprocess.TimeoutExpired as e:
        rc, out, err = None, str(e.stdout or ""), f"timed out after {timeout:.0f} s"
    lines = [ln for ln in err.splitlines() if ln.strip()]
    problems = []
    if rc != case.rc:
        problems.append(f"exit code {rc}, expected {case.rc}")
    if "Traceback" in err or "Traceback" in out:
        problems.append("traceback")
    if len(lines) != 1:
        problems.append(f"{len(lines)} lines on stderr")
    elif not lines[0].startswith("error: "):
        problems.append("stderr does not start with 'error: '")
    elif case.expect and case.expect not in lines[0]:
        problems.append(f"message lacks {case.expect!r}")
    for path, before in keep.items():
        if _tree(path) != before:
            problems.append(f"{path.name} was changed (nothing may be lost)")
    status = "clean" if not problems else "NOT CLEAN: " + "; ".join(problems)
    print(f"{case.id}: {status}" + ("" if not problems else f"\n    {err.strip()[-400:]}"),
          flush=True)
    return {"id": case.id, "argv": [case.module, *argv], "fault": case.fault, "rc": rc,
            "clean": not problems, "problems": problems, "stderr": err[-2000:],
            "seconds": round(time.perf_counter() - t0, 1)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workers", type=int, default=2, help="cases run in parallel (max 2)")
    ap.add_argument("--only", default="", help="run only cases whose id starts with this")
    ap.add_argument("--issue24", action="store_true",
                    help="run only the cases added for issue 24 (NOTHING_LOST_CASES)")
    ap.add_argument("--timeout", type=float, default=600.0,
                    help="seconds per case (cases that used to hang have a shorter bound)")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/bad_inputs.json"))
    args = ap.parse_args(argv)
    pool_cases = NOTHING_LOST_CASES if args.issue24 else ALL_CASES
    cases = [c for c in pool_cases if c.id.startswith(args.only)]
    ids = [c.id for c in ALL_CASES]
    assert len(ids) == len(set(ids)), "duplicate case ids"
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="fewstep_bad_inputs_") as tmp:
        fx = make_fixtures(Path(tmp))
        # this process holds {locked} and {locked_run} meanwhile (runs still training)
        with RunLock(fx["locked"], enabled=True), RunLock(fx["locked_run"], enabled=True), \
                ThreadPoolExecutor(max(1, min(2, args.workers))) as pool:
            results = list(pool.map(lambda c: run_case(c, fx, args.timeout), cases))
    by_cmd: dict[str, dict[str, int]] = {}
    for r in results:
        d = by_cmd.setdefault(r["id"].split("/")[0], {"tried": 0, "clean": 0})
        d["tried"] += 1
        d["clean"] += int(r["clean"])
    failures = [{k: r[k] for k in ("id", "argv", "fault", "rc", "problems", "stderr")}
                for r in results if not r["clean"]]
    summary = {"command": "python -m benchmarks.robustness.bad_inputs" + (
                   " --issue24" if args.issue24 else "") + (
                   f" --only {args.only}" if args.only else ""),
               "tried": len(results), "clean": sum(r["clean"] for r in results),
               "by_command": by_cmd, "seconds": round(time.perf_counter() - t0, 1),
               "failures": failures,
               "cases": [{k: r[k] for k in ("id", "rc", "clean", "seconds")} for r in results]}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=1) + "\n")
    print(f"{summary['clean']} / {summary['tried']} clean ({summary['seconds']:.0f} s); "
          f"wrote {args.out}")
    for f in failures:
        print(f"  {f['id']}: {'; '.join(f['problems'])}: {f['stderr'].strip()[-300:]}")
    return 0 if summary["clean"] == summary["tried"] else 1


if __name__ == "__main__":
    sys.exit(main())
