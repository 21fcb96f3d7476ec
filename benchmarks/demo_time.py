"""Wall time of the main job: ``fewstep demo`` from a cold teacher cache, and its metrics.

Usage::

    python -m benchmarks.demo_time --out benchmarks/results

Writes ``demo_time.json`` and ``demo_time.md``. The goal (issue: at most 5 minutes on 2 CPU
cores) is checked here, never in a test.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GOAL_SECONDS = 300.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "fewstep", "demo", "--out", f"{tmp}/demo", "--quiet",
               f"cache.dir={tmp}/cache"]
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True)
        seconds = time.perf_counter() - t0
        metrics = json.loads(Path(f"{tmp}/demo/metrics.json").read_text())
    payload = {"seconds": seconds, "goal_seconds": GOAL_SECONDS, "within_goal":
               seconds <= GOAL_SECONDS, "cpu_count": os.cpu_count(), "metrics": metrics}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "demo_time.json").write_text(json.dumps(payload, indent=1))
    lines = [f"`fewstep demo` (cold teacher cache): **{seconds:.0f} s** on {os.cpu_count()} "
             f"cores (goal ≤ {GOAL_SECONDS:.0f} s)", "",
             "| sampler | fid | fid_vs_teacher | precision | recall | class_accuracy |",
             "|---|---|---|---|---|---|"]
    for name, m in metrics.items():
        lines.append(f"| {name} | {m['fid']:.2f} | {m['fid_vs_teacher']:.2f} | "
                     f"{m['precision']:.3f} | {m['recall']:.3f} | {m['class_accuracy']:.4f} |")
    (args.out / "demo_time.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
