"""Benchmark: ``fewstep demo --data DIR`` on an image set the project does not ship.

The data set is drawn here: 16x16 RGB images of three shape classes (disc, square, triangle),
random position, size and colour on a dark random background, drawn at 4x and downsampled
(anti-aliased), written as PNG files into ``DIR/<class>/``. Then ``fewstep demo --data DIR
--minutes M`` runs as a subprocess (teacher training, Turbo++ 2-step distillation, evaluation
in pixel space) and its wall time and ``metrics.json`` are recorded.

Targets (issue 12): 2-step student's Fréchet distance <= 1.1x the 8-step teacher's and below
naive 2-step sampling's, in <= 15 minutes on 2 CPU cores.

    python -m benchmarks.own_images [--minutes 14] [--per-class 1000] [--out runs/own_images]

Writes ``benchmarks/results/own_images.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

RESULTS = Path(__file__).resolve().parent / "results"
CLASSES = ("disc", "square", "triangle")


def draw_shape(kind: str, rng: np.random.Generator, size: int = 16, scale: int = 4
               ) -> Image.Image:
    """One ``size x size`` RGB image of ``kind`` (drawn at ``scale``x, then downsampled)."""
    big = size * scale
    bg = tuple(int(v) for v in rng.integers(0, 70, 3))
    hue = rng.random()
    col = tuple(int(255 * (0.55 + 0.45 * math.cos(2 * math.pi * (hue + k / 3)))) for k in range(3))
    im = Image.new("RGB", (big, big), bg)
    d = ImageDraw.Draw(im)
    r = rng.uniform(0.22, 0.4) * big
    cx, cy = rng.uniform(r, big - r), rng.uniform(r, big - r)
    if kind == "disc":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=col)
    elif kind == "square":
        a = r * 0.85
        d.rectangle([cx - a, cy - a, cx + a, cy + a], fill=col)
    else:
        pts = [(cx + r * math.cos(math.pi / 2 + k * 2 * math.pi / 3),
                cy - r * math.sin(math.pi / 2 + k * 2 * math.pi / 3)) for k in range(3)]
        d.polygon(pts, fill=col)
    return im.resize((size, size), Image.Resampling.LANCZOS)


def make_shapes(folder: Path, per_class: int = 1000, seed: int = 0) -> Path:
    """Write ``per_class`` PNGs per class into ``folder/<class>/``; returns ``folder``."""
    rng = np.random.default_rng(seed)
    for kind in CLASSES:
        (folder / kind).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            draw_shape(kind, rng).save(folder / kind / f"{i:05d}.png")
    return folder


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=13.0,
                    help="budget given to fewstep demo (process start-up and the report come "
                    "on top; the target is <= 15 min wall time)")
    ap.add_argument("--per-class", type=int, default=1000)
    ap.add_argument("--out", type=Path, default=Path("runs/own_images"))
    args = ap.parse_args(argv)
    data = make_shapes(args.out / "shapes16", args.per_class)
    demo_out = args.out / "demo"
    cmd = [sys.executable, "-m", "fewstep", "demo", "--data", str(data), "--minutes",
           str(args.minutes), "--out", str(demo_out), "--quiet"]
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    load_after = os.getloadavg()
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
        raise SystemExit(f"fewstep demo failed with exit code {proc.returncode}")
    metrics = json.loads((demo_out / "metrics.json").read_text())
    s = metrics
    fd_t8, fd_t2, fd_s2 = (s[k]["fd"] for k in ("teacher_8", "teacher_2", "student_2"))
    result = {
        "command": "python -m benchmarks.own_images " + " ".join(argv or sys.argv[1:]),
        "demo_command": " ".join(["fewstep", *cmd[3:]]),
        "data": f"{len(CLASSES)} classes x {args.per_class} procedurally drawn 16x16 RGB shapes",
        "wall_seconds": round(wall, 1), "budget_minutes": args.minutes,
        "loadavg_before": [round(v, 2) for v in load_before],
        "loadavg_after": [round(v, 2) for v in load_after],
        "feature_space": s["student_2"]["feature_space"],
        "timing": json.loads((demo_out / "timing.json").read_text()),
        "metrics": s,
        "targets": {"student_fd_le_1.1x_teacher8": fd_s2 <= 1.1 * fd_t8,
                    "student_fd_lt_naive_teacher2": fd_s2 < fd_t2,
                    "wall_le_15_min": wall <= 15 * 60,
                    "student_over_teacher8": round(fd_s2 / fd_t8, 3)},
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "own_images.json").write_text(json.dumps(result, indent=2))
    cols = ["fd", "swd", "precision", "recall", "density", "coverage", "fd_vs_teacher",
            "class_accuracy", "nfe"]
    cols = [c for c in cols if any(c in m for m in s.values())]
    lines = [f"`{result['command']}` — {result['data']}; `{result['demo_command']}`",
             "", f"wall time **{wall:.0f} s** (budget {args.minutes} min), load average "
             f"before {result['loadavg_before']}, after {result['loadavg_after']}; feature "
             f"space: {result['feature_space']}", "",
             "| sampler | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for name, m in s.items():
        lines.append(f"| {name} | " + " | ".join(f"{m[c]:.4g}" if c in m else "" for c in cols)
                     + " |")
    lines += ["", f"student_2 / teacher_8 Fréchet distance: "
              f"{result['targets']['student_over_teacher8']} (target <= 1.1); below "
              f"teacher_2: {result['targets']['student_fd_lt_naive_teacher2']}"]
    (RESULTS / "own_images.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return result


if __name__ == "__main__":
    main()
