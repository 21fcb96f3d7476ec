"""SIGKILL a distillation at seeded random moments, resume each time, compare with a clean run.

``python -m benchmarks.robustness.kill_resume [--kills 20] [--seed 0] [--iterations 300]
[--precision no|fp16|bf16]`` trains a tiny Turbo++ student on the 2-D checkerboard (shipped
teacher, 4-shard teacher cache) once without interruption, then again with ``--kills``
SIGKILLs, each followed by ``--resume``:

* ``cache``: while a teacher-cache shard is being written (its temp file exists);
* ``before_first_checkpoint``: after a random number of logged steps, before any checkpoint;
* ``checkpoint``: while a checkpoint is being written (its temp file exists);
* ``step``: as soon as a random step (beyond the last checkpoint) has been logged.

Kills wait on what the run writes, never on wall-clock time (see :mod:`fewstep.testing.runs`);
fsync of temp files is slowed down by 0.3 s in both runs (a slow disk) so that "during a
write" kills land inside the write. After the last kill the run finishes; the final EMA
student, the last checkpoint, the teacher cache and ``losses.jsonl`` must be byte-identical to
the uninterrupted run's, with no temp file left. Writes
``benchmarks/results/kill_resume.json`` (``kill_resume_<precision>.json`` for fp16 / bf16).

``--precision fp16`` trains with autocast + a loss scaler, with a step-1 loss weight large
enough that the first steps overflow at the initial scale: the scale moves before the first
kill, so a resume that lost the scaler's state (its scale and growth counter) would differ.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import yaml

from fewstep.data.registry import shipped_teacher
from fewstep.distill.engine.state import list_checkpoints
from fewstep.testing.runs import (
    RunFailed,
    finish,
    kill,
    logged_steps,
    max_logged_step,
    random_kill_step,
    start_distill,
    temp_files,
    wait_for,
    wait_for_new_temp_file,
    wait_for_step,
)
from fewstep.utils.files import load_tensors

SLOW_FSYNC = 0.3


def tiny_config(cache_dir: Path, iterations: int, ckpt_every: int, keep_last: int = 2,
                precision: str = "no") -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "data": "checkerboard", "method": "turbo_pp",
        "teacher": {"path": str(shipped_teacher("checkerboard"))},
        "cache": {"dir": str(cache_dir), "size": 512, "shard_size": 128, "batch_size": 128},
        "train": {"iterations": iterations, "batch_size": 32, "ckpt_every": ckpt_every,
                  "log_every": 1, "keep_last": keep_last, "lr_warmup": 20,
                  "mixed_precision": precision},
        "eval": {"num_samples": 10}}
    if precision == "fp16":  # gradients overflow at the initial scale: the scaler moves
        cfg["step1"] = {"weight": 3000.0}
    return cfg


def schedule(kills: int, rng: random.Random) -> list[str]:
    """Kill kinds in order: cache writes first (only the first runs build the cache), then
    before the first checkpoint, then checkpoint writes and plain steps shuffled."""
    n_cache = max(1, kills // 7)
    n_first = max(1, kills // 5)
    rest = kills - n_cache - n_first
    mid = ["checkpoint"] * (rest // 2) + ["step"] * (rest - rest // 2)
    rng.shuffle(mid)
    return ["cache"] * n_cache + ["before_first_checkpoint"] * n_first + mid


def shard_dir(cache_root: Path) -> Path | None:
    subs = [p for p in cache_root.iterdir() if p.is_dir()] if cache_root.is_dir() else []
    return subs[0] if subs else None


def identical(a: Path, b: Path) -> tuple[bool, str]:
    ta, tb = load_tensors(a)[0], load_tensors(b)[0]
    if sorted(ta) != sorted(tb):
        return False, f"{a.name}: different tensor names"
    diff = [k for k in ta if not torch.equal(ta[k], tb[k])]
    return not diff, f"{a.name}: {len(diff)} tensors differ (e.g. {diff[:3]})" if diff else ""


def consistent(ref: Path, run: Path) -> tuple[bool, str]:
    """The killed run's state so far matches the reference: its complete ``losses.jsonl`` rows
    are the reference's first rows (no duplicates, no gaps), and every checkpoint it holds is
    byte-for-byte the reference's checkpoint of the same step."""
    lines = (run / "losses.jsonl").read_bytes().splitlines(keepends=True) \
        if (run / "losses.jsonl").exists() else []
    lines = [ln for ln in lines if ln.endswith(b"\n")]
    ref_lines = (ref / "losses.jsonl").read_bytes().splitlines(keepends=True)
    if lines != ref_lines[:len(lines)]:
        steps = logged_steps(run)
        return False, f"losses.jsonl is not a prefix of the reference's (steps {steps[:12]}...)"
    for ck in list_checkpoints(run / "checkpoints"):
        ok, why = identical(ref / "checkpoints" / ck.name, ck)
        if not ok:
            return False, why
    return True, ""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--iterations", type=int, default=300)
    ap.add_argument("--ckpt-every", type=int, default=20)
    ap.add_argument("--precision", choices=["no", "fp16", "bf16"], default="no",
                    help="train.mixed_precision of both runs")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    if args.out is None:
        suffix = "" if args.precision == "no" else f"_{args.precision}"
        args.out = Path(f"benchmarks/results/kill_resume{suffix}.json")
    rng = random.Random(args.seed)
    t0 = time.perf_counter()
    kinds = schedule(args.kills, rng)
    events: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="fewstep_kill_resume_") as tmp:
        root = Path(tmp)
        log = root / "train.log"
        ref, run = root / "ref", root / "run"
        ref_cache, run_cache = root / "cache_ref", root / "cache_run"
        # the reference keeps every checkpoint, to compare each one the killed run writes
        for name, cache, keep in (("ref", ref_cache, 10**6), ("run", run_cache, 2)):
            (root / f"{name}.yaml").write_text(yaml.safe_dump(
                tiny_config(cache, args.iterations, args.ckpt_every, keep, args.precision)))
        ref_args = ["--config", str(root / "ref.yaml"), "--out", str(ref), "--quiet"]
        proc = start_distill(ref_args, log, SLOW_FSYNC)
        if finish(proc, log) != 0:
            raise RunFailed(f"reference run failed:\n{log.read_text()[-3000:]}")
        t_ref = time.perf_counter() - t0

        args_run = ["--config", str(root / "run.yaml"), "--out", str(run), "--quiet"]
        first = True
        ckpts = run / "checkpoints"
        n_first = kinds.count("before_first_checkpoint")
        first_targets = sorted(rng.sample(range(1, args.ckpt_every), n_first))
        for i, kind in enumerate(kinds):
            proc = start_distill(args_run if first else [*args_run, "--resume"], log,
                                 SLOW_FSYNC)
            first = False
            before = max_logged_step(run)
            stale = set(temp_files(ckpts))
            ev: dict[str, Any] = {"kill": i + 1, "kind": kind}
            if kind == "cache":
                # the first cache kill lands in whatever write comes first (fingerprint.json),
                # later ones in a shard write
                pre = "." if i == 0 else ".shard_"
                wait_for(proc, lambda pre=pre: (d := shard_dir(run_cache)) is not None
                         and any(p.name.startswith(pre) for p in temp_files(d)),
                         "a teacher-cache write", log)
                d = shard_dir(run_cache)
                ev["temp_files"] = [p.name for p in temp_files(d)] if d else []
            elif kind == "before_first_checkpoint":
                # increasing targets: the log a previous kill left holds fewer steps, so the
                # kill comes after *this* process has emptied it and logged the target again
                target = first_targets.pop(0)
                wait_for_step(proc, run, target, log)
                ev["target_step"] = target
            elif kind == "checkpoint":  # a temp file of *this* process (not a torn old one)
                wait_for_new_temp_file(proc, ckpts, stale, "a checkpoint write", log)
                ev["temp_files"] = [p.name for p in set(temp_files(ckpts)) - stale]
            else:
                target = random_kill_step(run, rng, args.ckpt_every, args.iterations, before)
                if target is None:
                    raise RunFailed(f"kill {i + 1}: no step left before --iterations "
                                    f"{args.iterations} (fewer --kills, or more --iterations)")
                wait_for_step(proc, run, target, log)
                ev["target_step"] = target
            kill(proc)
            ev["checkpoints_after_kill"] = [p.name for p in list_checkpoints(ckpts)]
            ev["max_logged_step"] = max_logged_step(run)
            if kind == "cache":
                d = shard_dir(run_cache)
                ev["landed_in_write"] = bool(d and temp_files(d))
            elif kind == "checkpoint":
                ev["landed_in_write"] = bool(set(temp_files(ckpts)) - stale)
            ev["consistent"], why = consistent(ref, run)
            if why:
                ev["inconsistency"] = why
            events.append(ev)
            print(f"kill {i + 1:2d}/{len(kinds)} {kind:24s} logged step {ev['max_logged_step']:4d} "
                  f"checkpoints {ev['checkpoints_after_kill'][-1:]}", flush=True)
        proc = start_distill([*args_run, "--resume"], log, SLOW_FSYNC)
        rc = finish(proc, log)

        checks: dict[str, Any] = {"final_exit_code": rc}
        # kill i's resume is judged by the state seen at the next kill (or at the end)
        judged = [e["consistent"] for e in events[1:]]
        problems = []
        if rc != 0:
            problems.append(f"final resume exited {rc}")
        else:
            for name in ("student.safetensors",
                         f"checkpoints/ckpt_{args.iterations:08d}.safetensors"):
                ok, why = identical(ref / name, run / name)
                checks[name] = ok
                if not ok:
                    problems.append(why)
            same_log = (ref / "losses.jsonl").read_bytes() == (run / "losses.jsonl").read_bytes()
            checks["losses.jsonl"] = same_log
            steps = logged_steps(run)
            if not same_log:
                problems.append(f"losses.jsonl differs (steps {len(steps)} rows, unique "
                                f"{len(set(steps))}, expected 1..{args.iterations})")
            ref_shards = sorted(p.name for p in shard_dir(ref_cache).iterdir())  # type: ignore
            run_shards = sorted(p.name for p in shard_dir(run_cache).iterdir())  # type: ignore
            same_cache = ref_shards == run_shards and all(
                identical(shard_dir(ref_cache) / n, shard_dir(run_cache) / n)[0]  # type: ignore
                for n in ref_shards if n.endswith(".safetensors"))
            checks["teacher_cache"] = same_cache
            if not same_cache:
                problems.append("teacher cache differs")
            leftovers = [p.name for p in temp_files(run / "checkpoints")] + \
                [p.name for p in temp_files(shard_dir(run_cache))]  # type: ignore[arg-type]
            checks["temp_files_left"] = leftovers
            judged.append(not problems)
            if leftovers:
                problems.append(f"temp files left: {leftovers}")
        text = log.read_text(errors="replace")
        checks["tracebacks_in_log"] = text.count("Traceback")
    result = {"command": "python -m benchmarks.robustness.kill_resume" + "".join(
                  f" {a}" for a in (argv if argv is not None else sys.argv[1:])),
              "kills": len(events), "iterations": args.iterations,
              "precision": args.precision,
              "ckpt_every": args.ckpt_every, "seed": args.seed,
              "identical": not problems, "problems": problems, "checks": checks,
              "resumes_consistent": sum(judged), "resumes_judged": len(judged),
              "kinds": {k: kinds.count(k) for k in sorted(set(kinds))},
              "landed_in_write": sum(bool(e.get("landed_in_write")) for e in events),
              "reference_seconds": round(t_ref, 1),
              "seconds": round(time.perf_counter() - t0, 1), "events": events}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"resumes consistent with the uninterrupted run: {sum(judged)} / {len(judged)}; "
          f"final weights, checkpoint, cache and losses.jsonl identical: {not problems} "
          f"{problems or ''}({result['seconds']:.0f} s); wrote {args.out}")
    return 0 if not problems and all(judged) else 1


if __name__ == "__main__":
    sys.exit(main())
