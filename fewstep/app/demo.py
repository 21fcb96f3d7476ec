"""``fewstep demo``: distill the shipped digits teacher into a 2-step student with the default
Turbo++ recipe, then evaluate teacher (8 and 2 steps) and student (2 steps) from the same noise
and write ``metrics.json`` and ``report.html``.

``fewstep demo --data PATH [--minutes M] [--teacher FILE]`` (:func:`run_image_demo`) does the
same on your own images: it reads and checks the data, trains a teacher sized for the images
(or takes ``--teacher``), distills it with Turbo++ into a 2-step student, and evaluates in a
feature space valid for the data (pixels by default). The time budget is split up front:
:data:`BUDGET_SPLIT` of ``M`` minutes for the teacher, the distillation, and evaluation plus
report; ``timing.json`` records the planned and the measured seconds of each phase.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

from fewstep.app.report import metrics_table_markdown, write_report
from fewstep.app.resources import check_distill_resources
from fewstep.data.problem import get_problem
from fewstep.data.spec import canonical_data, data_label
from fewstep.distill.config import DistillConfig
from fewstep.distill.trainer import Trainer
from fewstep.errors import ConfigError, TrainingInterrupted
from fewstep.evaluation.evaluate import check_heldout_for_metrics, evaluate_samplers, metrics_json
from fewstep.presets import preset_path
from fewstep.teachers.training import (
    TeacherConfig,
    load_denoiser,
    teacher_preset_for,
    train_teacher,
)
from fewstep.utils.config_files import dump_yaml, load_config
from fewstep.utils.files import atomic_write_text, strict_json
from fewstep.utils.output_dirs import check_output_dir, output_folder
from fewstep.utils.run_lock import RunLock

COMMAND = "demo"

DEMO_SAMPLERS = ("teacher_8", "teacher_2", "student_2")


def run_demo(out: str | Path, overrides: list[str] | None = None, progress: bool = True,
             preset: str = "demo", overwrite: bool = False) -> dict[str, Any]:
    """Train + evaluate; returns the metrics dict also written to ``out/metrics.json``.

    ``out`` is written like every output folder (:mod:`fewstep.utils.output_dirs`): in a temp
    sibling under the run lock, swapped in when complete; a folder that is not an earlier
    demo's output is refused unless ``overwrite``."""
    out = Path(out)
    cfg = load_config(DistillConfig, preset_path(preset), overrides)
    check_output_dir(out, COMMAND, overwrite)
    check_distill_resources(cfg)
    t0 = time.perf_counter()
    with output_folder(out, COMMAND, overwrite) as tmp:
        with RunLock(tmp / "run"):
            trainer = Trainer(cfg, tmp / "run", progress=progress)
            student = trainer.train()
        t_train = time.perf_counter() - t0
        samplers = [s for s in DEMO_SAMPLERS if not s.startswith("student")]
        samplers += [f"student_{k}" for k in range(student.num_steps, 0, -1)
                     if k == student.num_steps]
        t = trainer.teacher
        metrics, samples = evaluate_samplers(t.problem, samplers, t.denoiser, t.cfg_scale,
                                             t.shift, student, cfg.eval.num_samples,
                                             cfg.eval.seed, device=trainer.device)
        t_total = time.perf_counter() - t0
        atomic_write_text(tmp / "metrics.json", metrics_json(metrics))
        notes = [f"method={cfg.method}, data={cfg.data}, generator updates="
                 f"{cfg.train.iterations}, batch={cfg.train.batch_size}; distillation "
                 f"{t_train:.0f} s, total {t_total:.0f} s."]
        write_report(tmp, metrics, samples, tmp / "run" / "losses.jsonl",
                     "fewstep demo: Turbo++ 2-step student vs. its 8-step teacher", notes)
    if progress:
        print(metrics_table_markdown(metrics))
        print(f"wrote {out / 'report.html'} and {out / 'metrics.json'} ({t_total:.0f} s)")
    return metrics


#: shares of the time budget: teacher training, distillation (teacher cache included), and
#: evaluation + report (the remainder; evaluation is not interrupted)
BUDGET_SPLIT = {"teacher": 0.45, "distill": 0.35, "evaluate": 0.20}

#: Turbo++ 2-step recipe for user images (teacher path, data, cache dir filled in): GAN on the
#: frozen teacher's features, step-1 trajectory loss, final-output regression onto the
#: teacher's same-noise sample; no fake-score network (cheaper per iteration on a CPU).
IMAGE_DEMO_CONFIG: dict[str, Any] = {
    "method": "turbo_pp",
    "teacher": {"steps": 8},
    "student": {"num_steps": 2, "parameterization": "decoupled", "transition": "fresh"},
    "gan": {"weight": 0.3, "loss": "non_saturating", "real": "teacher", "real_source": "cache",
            "discriminator": "teacher_features", "layers": [-1, -2], "lr": 2.0e-4},
    "dm": {"weight": 0.0},
    "step1": {"loss": "teacher_traj", "weight": 1.0},
    "turbo": {"end_to_end": True, "regression_weight": 1.0},
    "cache": {"size": 1000, "shard_size": 500, "batch_size": 250},
    "train": {"iterations": 100000, "batch_size": 32, "lr": 2.0e-4, "ema_decay": 0.98,
              "log_every": 10, "seed": 0},
    "eval": {"num_samples": 1000, "seed": 1234},
}


def run_image_demo(data: Any, out: str | Path, minutes: float = 15.0,
                   teacher: str | Path | None = None, overrides: list[str] | None = None,
                   progress: bool = True, features: str = "auto",
                   overwrite: bool = False) -> dict[str, Any]:
    """Teacher (trained or given), Turbo++ 2-step distillation, evaluation and report on
    ``data`` within about ``minutes`` (see module docstring); returns the metrics dict also
    written to ``out/metrics.json`` (one entry per sampler, each with its ``feature_space``).

    Distillation stops when its share of the budget is used (the EMA student at that
    iteration is evaluated); ``overrides`` are ``dotted.key=value`` items for the distillation
    config (e.g. ``train.batch_size=64``). ``out`` is written like every output folder
    (see :func:`run_demo`); the teacher and the run inside it are recorded with their final
    paths."""
    out = Path(out)
    budget = 60.0 * minutes
    plan = {k: round(v * budget, 1) for k, v in BUDGET_SPLIT.items()}
    t_start = time.perf_counter()
    canon = canonical_data(data)
    problem = get_problem(canon)  # read + check the data before anything is trained
    if not problem.is_user_data:
        raise ConfigError(f"--data: {canon!r} is a built-in data set; fewstep demo without "
                          f"--data runs the digits demo")
    check_heldout_for_metrics(problem, "--data")  # before minutes of training
    check_output_dir(out, COMMAND, overwrite, [p for p in (problem.image_data().source,
                                                           teacher) if p])
    say = print if progress else (lambda *a, **k: None)
    say(problem.image_data().summary())
    with output_folder(out, COMMAND, overwrite, [p for p in (problem.image_data().source,
                                                             teacher) if p]) as tmp:
        metrics, timing = _image_demo(problem, canon, data, out, tmp, budget, plan, t_start,
                                      teacher, overrides, progress, features, say)
    if progress:
        print(metrics_table_markdown(metrics))
        print(f"wrote {out / 'report.html'} and {out / 'metrics.json'} "
              f"({timing['total_seconds']:.0f} s)")
    return metrics


def _image_demo(problem: Any, canon: Any, data: Any, out: Path, tmp: Path, budget: float,
                plan: dict[str, float], t_start: float, teacher: str | Path | None,
                overrides: list[str] | None, progress: bool, features: str,
                say: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """The phases of :func:`run_image_demo`, writing into ``tmp`` (becomes ``out``)."""
    timing: dict[str, Any] = {"budget_seconds": budget, "planned_seconds": plan}
    # -- teacher -------------------------------------------------------------------------
    t0 = time.perf_counter()
    if teacher is None:
        preset = teacher_preset_for(tuple(problem.data_shape))
        tcfg = load_config(TeacherConfig, preset_path(preset),
                           base={"data": canon, "minutes": plan["teacher"] / 60.0})
        teacher = tmp / "teacher.safetensors"
        say(f"teacher: preset {preset}, up to {plan['teacher']:.0f} s")
        _, tinfo = train_teacher(tcfg, teacher, progress=progress)
        timing["teacher_steps"] = tinfo["steps"]
        timing["teacher_network"] = tinfo["network"]
    else:
        _, tfile = load_denoiser(teacher)
        tshape = tuple(tfile.get("network", {}).get("data_shape", ()))
        if tshape != tuple(problem.data_shape):
            raise ConfigError(f"--teacher: {teacher} takes samples of shape {tshape} but the "
                              f"data are {tuple(problem.data_shape)}")
    timing["teacher_seconds"] = round(time.perf_counter() - t0, 1)
    # -- distillation --------------------------------------------------------------------
    remaining = budget - (time.perf_counter() - t_start)
    distill_budget = max(10.0, remaining - plan["evaluate"])
    cfg_dict = json.loads(json.dumps(IMAGE_DEMO_CONFIG))
    cfg_dict["data"] = canon
    cfg_dict["teacher"]["path"] = str(Path(teacher).resolve())
    cfg_dict["cache"]["dir"] = str((tmp / "cache").resolve())
    cfg = load_config(DistillConfig, None, overrides, base=cfg_dict)
    check_distill_resources(cfg)
    t0 = time.perf_counter()
    run_lock = RunLock(tmp / "run")
    run_lock.acquire()
    trainer = Trainer(cfg, tmp / "run", progress=progress)
    timer = threading.Timer(distill_budget, trainer.request_stop, args=("time budget",))
    timer.daemon = True
    say(f"distill: Turbo++ 2-step, up to {distill_budget:.0f} s")
    timer.start()
    try:
        student = trainer.train()
        stopped = False
    except TrainingInterrupted:
        student, stopped = trainer.ema.eval(), True
    finally:
        timer.cancel()
        run_lock.release()
    _final_paths(cfg, tmp, out)
    timing["distill_seconds"] = round(time.perf_counter() - t0, 1)
    timing["distill_iterations"] = int(trainer.step)
    timing["distill_stopped_by_budget"] = stopped
    # -- evaluation ----------------------------------------------------------------------
    t0 = time.perf_counter()
    samplers = ["teacher_8", "teacher_2", f"student_{student.num_steps}"]
    t = trainer.teacher
    metrics, samples = evaluate_samplers(t.problem, samplers, t.denoiser, t.cfg_scale, t.shift,
                                         student,
                                         cfg.eval.num_samples, cfg.eval.seed,
                                         device=trainer.device, features=features)
    timing["evaluate_seconds"] = round(time.perf_counter() - t0, 1)
    timing["total_seconds"] = round(time.perf_counter() - t_start, 1)
    atomic_write_text(tmp / "metrics.json", metrics_json(metrics))
    atomic_write_text(tmp / "timing.json", strict_json(timing))
    fs = next(iter(metrics.values()))["feature_space"]
    notes = [f"data: {problem.image_data().summary()}.",
             f"feature space of fd / precision / recall / density / coverage: {fs}; swd on "
             f"pixels. Held-out images are the reference.",
             f"time budget {budget:.0f} s planned as teacher {plan['teacher']:.0f} s, "
             f"distillation {plan['distill']:.0f} s, evaluation {plan['evaluate']:.0f} s; "
             f"measured: teacher {timing['teacher_seconds']:.0f} s"
             + (f" ({timing['teacher_steps']} steps)" if "teacher_steps" in timing else
                " (given)")
             + f", distillation {timing['distill_seconds']:.0f} s "
             f"({timing['distill_iterations']} generator updates, batch "
             f"{cfg.train.batch_size}), evaluation {timing['evaluate_seconds']:.0f} s, total "
             f"{timing['total_seconds']:.0f} s."]
    write_report(tmp, metrics, samples, tmp / "run" / "losses.jsonl",
                 f"fewstep demo on {data_label(canon)}: Turbo++ 2-step student vs. its 8-step "
                 f"teacher", notes)
    return metrics, timing


def _final_paths(cfg: DistillConfig, tmp: Path, out: Path) -> None:
    """``run/config.yaml`` names the teacher and the cache where they will be once the
    output is in place (``out``), not in the temp folder they were written to."""
    final = out.absolute()

    def moved(p: str | None) -> str | None:
        if p is None or not Path(p).is_relative_to(tmp.resolve()):
            return p
        return str(final / Path(p).relative_to(tmp.resolve()))

    cfg.teacher.path = moved(cfg.teacher.path)
    cfg.cache.dir = moved(cfg.cache.dir) or cfg.cache.dir
    atomic_write_text(tmp / "run" / "config.yaml", dump_yaml(cfg))
