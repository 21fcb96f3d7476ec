"""Nothing lost: every writing command, SIGKILLed at random points, over a previous output and
over a user's folder.

``python -m benchmarks.robustness.nothing_lost [--trials 3] [--foreign 2] [--seed 0]
[--only NAME]`` runs, for each writing command (``export`` of a fewstep-format student,
``export`` of a diffusers-format student, ``sample``, ``eval --out``, ``teacher train`` (file +
sample grids), ``classifier train``, ``distill``, ``demo``), trials of two kinds:

* **previous**: ``parent/out`` is a complete earlier output of the same command and
  ``parent/unrelated.txt`` sits beside it; the command writes a new output there and is
  SIGKILLed at a random point. Kill points: *any-change* -- a uniform delay in
  ``[0, 1.2 x write window]`` after the first change below ``parent`` (the window measured in
  a clean run; some trials finish) -- and *first-commit* -- a delay in ``[0, 20 ms]`` after
  the first file of ``out`` (or ``out`` itself) is replaced, where a writer that commits file
  by file would be caught between two commits.
* **foreign**: ``out`` is a user's folder (``notes.txt``, ``sub/weights.bin``) or file; the
  command must refuse it; it is SIGKILLed at a random point all the same.

Judged from the files alone: the unrelated file is intact; ``out`` is byte-for-byte the
complete old output or the complete new one (outputs that are not reproducible byte for byte --
timings in ``metrics.json``, a teacher file's training seconds -- count as new when their
manifest verifies every byte, or, for single files, when they load and pass their checksum);
a foreign ``out`` is unchanged. ``distill`` never replaces a finished run (both kinds: the run
must be unchanged). Writes ``benchmarks/results/nothing_lost.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fewstep.data.registry import shipped_teacher
from fewstep.utils.files import load_tensors, read_metadata
from fewstep.utils.output_manifest import Incomplete, check_complete

UNRELATED = b"keep me\n"
RESULTS = Path("benchmarks/results")


def env() -> dict[str, str]:
    return dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1",
                HF_HUB_OFFLINE="1")


def fewstep(*args: str | Path) -> list[str]:
    return [sys.executable, "-m", "fewstep", *map(str, args)]


def run_ok(argv: list[str], cwd: Path | None = None) -> float:
    t0 = time.monotonic()
    r = subprocess.run(argv, capture_output=True, text=True, env=env(), cwd=cwd)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[3:8])}... exited {r.returncode}: "
                           f"{r.stderr[-1500:]}")
    return time.monotonic() - t0


def tree(path: Path) -> dict[str, bytes]:
    """Relative path -> bytes (lock files hold no content and are left out)."""
    if path.is_file():
        return {"": path.read_bytes()}
    if not path.is_dir():
        return {}
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*"))
            if p.is_file() and p.name != ".lock"}


def snapshot(folder: Path) -> tuple:
    out = []
    for p in sorted(folder.rglob("*")):
        try:
            st = p.lstat()
        except FileNotFoundError:
            continue
        out.append((str(p), st.st_ino, st.st_size, st.st_mtime_ns))
    return tuple(out)


# ------------------------------------------------------------------------------- judges
def judge_folder(command: str) -> Callable[[Path, dict, dict], str]:
    """old / new (byte-equal to a reference, or -- for outputs that are not reproducible --
    a complete output whose manifest verifies every byte) / a problem."""
    def judge(out: Path, old: dict, new: dict) -> str:
        got = tree(out)
        if got == old:
            return "old"
        if got == new:
            return "new"
        try:
            check_complete(out, command, deep=True)
        except Incomplete as e:
            return f"BROKEN: {e}"
        if sorted(got) != sorted(new):
            return f"BROKEN: files {sorted(set(got) ^ set(new))[:4]} differ from a new output"
        return "new"
    return judge


def judge_file(kind: str) -> Callable[[Path, dict, dict], str]:
    """A single file: the old bytes, or a complete new file (loads, checksum verified)."""
    def judge(out: Path, old: dict, new: dict) -> str:
        got = tree(out)
        if got == old:
            return "old"
        if got == new:
            return "new"
        if not got:
            return "BROKEN: missing"
        try:
            if kind == "json":
                json.loads(out.read_text(encoding="utf-8"),
                           parse_constant=lambda c: (_ for _ in ()).throw(ValueError(c)))
            elif kind == "classifier":
                if not read_metadata(out).get("format", "").startswith("fewstep."):
                    return "BROKEN: not a classifier file"
            else:
                load_tensors(out, kind=kind)
        except Exception as e:  # any failure to read it back is a broken output
            return f"BROKEN: {type(e).__name__}: {e}"
        return "new"
    return judge


@dataclass
class Writer:
    """One writing command: ``argv(out, which)`` writes output ``which`` (0: old, 1: new) at
    ``out``; ``outputs(out)`` are the paths it writes (judged one by one)."""

    name: str
    argv: Callable[[Path, int], list[str]]
    judges: list[Callable[[Path, dict, dict], str]]
    outputs: Callable[[Path], list[Path]] = lambda out: [out]
    file: bool = False  # out is a file (its parent holds the unrelated file)
    replaces: bool = True  # a previous output is replaced (False: refused, e.g. distill)
    refs: list[dict[str, dict]] = field(default_factory=list)


def save_unet_folder(folder: Path) -> None:
    """A tiny diffusers UNet2DModel + DDPMScheduler for 1x8x8 digits (a ``unet_eps``
    teacher), saved with diffusers alone."""
    import torch
    from diffusers import DDPMScheduler, UNet2DModel

    torch.manual_seed(0)
    UNet2DModel(sample_size=8, in_channels=1, out_channels=1, layers_per_block=1,
                block_out_channels=(32, 64), norm_num_groups=8,
                down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                up_block_types=("AttnUpBlock2D", "UpBlock2D"), attention_head_dim=8,
                ).save_pretrained(folder / "unet", safe_serialization=True)
    DDPMScheduler(num_train_timesteps=1000).save_pretrained(folder / "scheduler")


def build_writers(work: Path) -> list[Writer]:
    """The commands and the inputs they read (teachers, runs, images) prepared in ``work``."""
    ck = shipped_teacher("checkerboard")
    d = ["data=checkerboard", "method=turbo_pp", f"teacher.path={ck}", "train.iterations=4",
         "train.batch_size=16", "train.ckpt_every=2", "cache.size=64", "cache.shard_size=32",
         f"cache.dir={work / 'cache'}", "eval.num_samples=10"]
    runs = [work / "run_a", work / "run_b"]
    for i, r in enumerate(runs):
        if not (r / "student.safetensors").is_file():
            run_ok(fewstep("distill", "--quiet", "--out", r, *d, f"train.seed={i}"))
    unet_runs = [work / "unet_a", work / "unet_b"]
    unet = work / "unet_teacher"
    if not unet.is_dir():
        save_unet_folder(unet)
    for i, r in enumerate(unet_runs):
        if not (r / "student.safetensors").is_file():
            run_ok(fewstep("distill", "--quiet", "--out", r, "data=digits",
                           "teacher.kind=unet_eps", f"teacher.pretrained={unet}",
                           "train.iterations=2", "train.batch_size=8", "train.ckpt_every=2",
                           "cache.size=32", "cache.shard_size=32", f"cache.dir={work / 'cache'}",
                           "eval.num_samples=10", f"train.seed={i}"))
    imgs = work / "imgs"
    if not imgs.is_dir():
        import numpy as np
        from PIL import Image

        rng = np.random.default_rng(0)
        for c in range(2):
            (imgs / f"class{c}").mkdir(parents=True)
            for i in range(30):
                Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(
                    imgs / f"class{c}" / f"{i:03d}.png")
    grids = lambda out: [out, out.parent / f"{out.stem}_samples"]  # noqa: E731
    return [
        Writer("export", lambda o, w: fewstep("export", "--run", runs[w], "--out", o),
               [judge_folder("export")]),
        Writer("export_diffusers",
               lambda o, w: fewstep("export", "--run", unet_runs[w], "--out", o),
               [judge_folder("export")]),
        Writer("sample", lambda o, w: fewstep("sample", "--data", "checkerboard", "--num", "20",
                                              "--seed", str(1 + w), "--out", o),
               [judge_folder("sample")]),
        Writer("eval", lambda o, w: fewstep("eval", "--data", "checkerboard", "--num", "10",
                                            "--seed", str(1 + w), "--samplers", "teacher_2",
                                            "--timing-repeats", "1", "--out", o),
               [judge_file("json")], file=True),
        Writer("teacher_train",
               lambda o, w: fewstep("teacher", "train", "--quiet", "--data", "checkerboard",
                                    "--out", o, "steps=30", f"seed={w}", "network.hidden=32",
                                    "network.depth=1", "network.emb=16"),
               [judge_file("denoiser"), judge_folder("teacher train")], outputs=grids,
               file=True),
        Writer("classifier_train",
               lambda o, w: fewstep("classifier", "train", "--data", imgs, "--steps", "3",
                                    "--seed", str(w), "--out", o),
               [judge_file("classifier")], file=True),
        Writer("distill", lambda o, w: fewstep("distill", "--quiet", "--out", o, *d,
                                               f"train.seed={w}"),
               [judge_folder("distill")], replaces=False),
        Writer("demo", lambda o, w: fewstep("demo", "--quiet", "--out", o, "train.iterations=2",
                                            "cache.size=64", "cache.shard_size=32",
                                            f"cache.dir={work / 'cache'}",
                                            "eval.num_samples=10", f"train.seed={w}"),
               [judge_folder("demo")]),
    ]


# ------------------------------------------------------------------------------- trials
def _out(parent: Path, w: Writer) -> Path:
    return parent / ("out.safetensors" if w.name in ("teacher_train", "classifier_train")
                     else "out.json" if w.name == "eval" else "out")


def references(w: Writer, scratch: Path) -> tuple[list[dict], list[dict], float]:
    """The old and new outputs written by clean runs at the trial path (files name their own
    folder, e.g. a model card), and the write window of a clean run of the new one."""
    parent = scratch / "trial"
    shutil.rmtree(parent, ignore_errors=True)
    parent.mkdir()
    out = _out(parent, w)
    run_ok(w.argv(out, 0))
    old = [tree(p) for p in w.outputs(out)]
    keep = scratch / f"old_{w.name}"
    shutil.rmtree(keep, ignore_errors=True)
    shutil.copytree(parent, keep, symlinks=True)
    shutil.rmtree(parent)
    parent.mkdir()
    base = snapshot(parent)
    p = subprocess.Popen(w.argv(out, 1), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                         env=env())
    first = last = None
    prev = base
    while p.poll() is None:
        now = snapshot(parent)
        if now != prev:
            last = time.monotonic()
            first = first or last
            prev = now
        time.sleep(0.002)
    if p.returncode != 0:
        raise RuntimeError(f"{w.name}: reference run failed: {p.stderr.read()[-1500:]}")
    new = [tree(q) for q in w.outputs(out)]
    return old, new, max(0.05, (last or 0.0) - (first or 0.0))


def _identity(paths: list[Path]) -> dict[Path, int]:
    ids = {}
    for root in paths:
        for p in [root, *(root.rglob("*") if root.is_dir() else [])]:
            with contextlib.suppress(FileNotFoundError):
                ids[p] = p.stat().st_ino
    return ids


def trial(w: Writer, kind: str, trigger: str, window: float, old: list[dict], new: list[dict],
          rng: random.Random, scratch: Path) -> dict[str, Any]:
    parent = scratch / "trial"
    shutil.rmtree(parent, ignore_errors=True)
    shutil.copytree(scratch / f"old_{w.name}", parent, symlinks=True)
    out = _out(parent, w)
    (parent / "unrelated.txt").write_bytes(UNRELATED)
    if kind == "foreign":  # a user's things where the output goes
        for p in w.outputs(out):
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
        if w.file:
            out.write_bytes(b"my own file\n")
        else:
            (out / "sub").mkdir(parents=True)
            (out / "notes.txt").write_text("my notes\n")
            (out / "sub" / "weights.bin").write_bytes(b"\x01" * 1000)
    before = [tree(p) for p in w.outputs(out)]
    base = snapshot(parent)
    ids = _identity(w.outputs(out))
    delay = rng.uniform(0.0, 0.02 if trigger == "first-commit" else 1.2 * window)
    p = subprocess.Popen(w.argv(out, 1), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                         env=env())
    fire = None
    while p.poll() is None:
        if fire is None:
            changed = (_identity(w.outputs(out)) != ids) if trigger == "first-commit" \
                else snapshot(parent) != base
            if changed:
                fire = time.monotonic() + delay
        if fire is not None and time.monotonic() >= fire:
            p.send_signal(signal.SIGKILL)
            break
        time.sleep(0.001)
    p.wait()
    err = p.stderr.read().decode(errors="replace") if p.stderr else ""
    rec: dict[str, Any] = {"writer": w.name, "kind": kind, "trigger": trigger,
                           "delay": round(delay, 3), "killed": p.returncode == -signal.SIGKILL,
                           "rc": p.returncode,
                           "unrelated_intact": (parent / "unrelated.txt").read_bytes()
                           == UNRELATED}
    states = []
    for q, o, n, b, judge in zip(w.outputs(out), old, new, before, w.judges, strict=True):
        if kind == "foreign" or not w.replaces:
            states.append("unchanged" if tree(q) == b else "CHANGED")
        else:
            states.append(judge(q, o, n))
    rec["outputs"] = states
    rec["refused"] = p.returncode == 2 and "error:" in err
    rec["temp_left"] = sorted(x.name for x in parent.iterdir() if x.name.startswith(".fewstep-"))
    rec["ok"] = rec["unrelated_intact"] and all(s in ("old", "new", "unchanged") for s in states)
    return rec


def summarise(recs: list[dict]) -> dict[str, Any]:
    rows = {}
    for r in recs:
        k = (r["writer"], r["kind"])
        row = rows.setdefault(k, {"writer": r["writer"], "kind": r["kind"], "trials": 0,
                                  "killed": 0, "unrelated_intact": 0, "old": 0, "new": 0,
                                  "unchanged": 0, "broken": 0, "temp_left": 0})
        row["trials"] += 1
        row["killed"] += int(r["killed"])
        row["unrelated_intact"] += int(r["unrelated_intact"])
        for s in r["outputs"]:
            key = s if s in ("old", "new", "unchanged") else "broken"
            row[key] += 1
        row["temp_left"] += int(bool(r["temp_left"]))
    return {"rows": list(rows.values()), "trials": len(recs),
            "ok": sum(r["ok"] for r in recs)}


def markdown(summary: dict[str, Any], command: str) -> str:
    lines = [f"# Nothing lost (`{command}`)", "",
             "| command | trials | killed | unrelated intact | old | new | unchanged (refused) "
             "| broken | temp left |", "|---|---|---|---|---|---|---|---|---|"]
    for r in summary["rows"]:
        lines.append(f"| {r['writer']} ({r['kind']}) | {r['trials']} | {r['killed']} | "
                     f"{r['unrelated_intact']} | {r['old']} | {r['new']} | {r['unchanged']} | "
                     f"{r['broken']} | {r['temp_left']} |")
    lines += ["", f"{summary['ok']} / {summary['trials']} trials: unrelated files intact and "
              "every output the complete old or the complete new one (or, refused, unchanged)."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--trials", type=int, default=3, help="previous-output trials per trigger")
    ap.add_argument("--foreign", type=int, default=2, help="foreign-out trials per command")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", default="", help="comma-separated writer names")
    ap.add_argument("--work", type=Path, default=None, help="keep inputs here (reruns)")
    ap.add_argument("--out", type=Path, default=RESULTS / "nothing_lost.json")
    args = ap.parse_args(argv)
    rng = random.Random(args.seed)
    t0 = time.perf_counter()
    recs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="fewstep_nothing_lost_") as tmp:
        work = args.work or Path(tmp) / "work"
        work.mkdir(parents=True, exist_ok=True)
        scratch = Path(tmp) / "scratch"
        scratch.mkdir()
        only = {s for s in args.only.split(",") if s}
        for w in build_writers(work):
            if only and w.name not in only:
                continue
            old, new, window = references(w, scratch)
            print(json.dumps({"writer": w.name, "write_window_s": round(window, 3)}),
                  flush=True)
            plan = [("previous", "any-change")] * args.trials + \
                [("previous", "first-commit")] * args.trials + \
                [("foreign", "any-change")] * args.foreign
            for kind, trigger in plan:
                rec = trial(w, kind, trigger, window, old, new, rng, scratch)
                recs.append(rec)
                print(json.dumps(rec), flush=True)
    command = "python -m benchmarks.robustness.nothing_lost" + "".join(
        f" {a}" for a in (argv if argv is not None else sys.argv[1:]))
    summary = {"command": command, **summarise(recs),
               "seconds": round(time.perf_counter() - t0, 1), "records": recs}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=1) + "\n")
    args.out.with_suffix(".md").write_text(markdown(summary, command))
    print(markdown(summary, command))
    return 0 if summary["ok"] == summary["trials"] else 1


if __name__ == "__main__":
    sys.exit(main())
