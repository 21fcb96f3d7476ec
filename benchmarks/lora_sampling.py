"""LoRA-student sampling speed vs. the 8-step teacher (the quiet-mode protocol of ``perf``).

Runs :func:`benchmarks.perf.sampling_throughput` (digits teacher architecture, batch 128, the
2-step decoupled / shared / LoRA students built from the same network, ``inference_mode``,
all samplers interleaved after warm-up, medians) with 2 threads and ``--repeats`` repeats, and
appends the ratios with the machine's load average before and after to ``--out`` (one entry
per run under ``runs``), so that measurements on a shared machine can be judged.

Usage::

    python -m benchmarks.lora_sampling [--repeats 40] [--out benchmarks/results/lora_sampling.json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.perf import Settings, environment, sampling_throughput, teacher_file


def measure(repeats: int) -> dict[str, Any]:
    torch.set_num_threads(2)
    s = Settings()
    s.sampling_repeats = repeats
    with tempfile.TemporaryDirectory() as tmp:
        teacher, desc = teacher_file(Path(tmp))
        before = environment()["load"]
        r = sampling_throughput(teacher, s)
    return {"time": time.strftime("%Y-%m-%d %H:%M:%S"), "repeats": repeats, "teacher": desc,
            "load_before": before, "load_after": environment()["load"],
            "ratio_of_medians": r["ratio"], "ratio_paired_median": r["ratio_paired_median"],
            "median_seconds": r["median_seconds"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=40)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/lora_sampling.json"))
    args = ap.parse_args()
    run = measure(args.repeats)
    old = json.loads(args.out.read_text()) if args.out.is_file() else {"runs": []}
    old["runs"].append(run)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(old, indent=1))
    print(json.dumps(run, indent=1))


if __name__ == "__main__":
    main()
