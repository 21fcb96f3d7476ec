"""``fewstep demo``: distill the shipped digits teacher into a 2-step student with the default
Turbo++ recipe, then evaluate teacher (8 and 2 steps) and student (2 steps) from the same noise
and write ``metrics.json`` and ``report.html``."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from fewstep.config import load_config
from fewstep.distill.config import DistillConfig
from fewstep.distill.run_lock import RunLock
from fewstep.distill.trainer import Trainer
from fewstep.evaluation import evaluate_samplers
from fewstep.io import atomic_write_text
from fewstep.presets import preset_path
from fewstep.report import metrics_table_markdown, write_report

DEMO_SAMPLERS = ("teacher_8", "teacher_2", "student_2")


def run_demo(out: str | Path, overrides: list[str] | None = None, progress: bool = True,
             preset: str = "demo") -> dict[str, Any]:
    """Train + evaluate; returns the metrics dict also written to ``out/metrics.json``."""
    out = Path(out)
    cfg = load_config(DistillConfig, preset_path(preset), overrides)
    t0 = time.perf_counter()
    with RunLock(out / "run"):  # one demo per folder
        trainer = Trainer(cfg, out / "run", progress=progress)
        student = trainer.train()
    t_train = time.perf_counter() - t0
    samplers = [s for s in DEMO_SAMPLERS if not s.startswith("student")]
    samplers += [f"student_{k}" for k in range(student.num_steps, 0, -1)
                 if k == student.num_steps]
    metrics, samples = evaluate_samplers(trainer.problem, samplers, trainer.teacher,
                                         trainer.teacher_w, trainer.teacher_shift, student,
                                         cfg.eval.num_samples, cfg.eval.seed,
                                         device=trainer.device)
    t_total = time.perf_counter() - t0
    atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2))
    notes = [f"method={cfg.method}, data={cfg.data}, generator updates={cfg.train.iterations}, "
             f"batch={cfg.train.batch_size}; distillation {t_train:.0f} s, total {t_total:.0f} s."]
    write_report(out, metrics, samples, out / "run" / "losses.jsonl",
                 "fewstep demo: Turbo++ 2-step student vs. its 8-step teacher", notes)
    if progress:
        print(metrics_table_markdown(metrics))
        print(f"wrote {out / 'report.html'} and {out / 'metrics.json'} ({t_total:.0f} s)")
    return metrics
