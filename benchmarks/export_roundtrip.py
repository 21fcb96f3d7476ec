"""Export round trip: students exported by fewstep, sampled by plain diffusers without fewstep.

For every case (teacher family x parameterization x dtype) a tiny, randomly initialised teacher
is saved to disk (a pipeline teacher -- Z-Image, an SD 1.5-style UNet, PixArt-Sigma, Flux --
read generically through ``teacher.kind: diffusers``; the eps-UNet through its own kind), a
student is built from it the way the trainer builds one (frozen teacher in ``dtype``,
trainable weights in float32) and its trainable weights are perturbed so that the steps
differ, then :func:`~fewstep.export.diffusers_export.export_student` writes the folder. The
loading snippet of the folder's ``README.md`` runs in a subprocess in which importing fewstep
fails (``sys.modules["fewstep"] = None`` before anything else; run from a folder without fewstep
and without ``PYTHONPATH``), and its images are compared with

* the in-memory student (``Student.generate`` from the noise :class:`StudentPipeline` draws for
  the seed, decoded by the teacher's codec; pipeline cards return images in ``[0, 1]`` through
  the stock pipeline's ``__call__``, so those are compared after ``x / 2 + 0.5``, clamped),
* fewstep's own reload (:class:`~fewstep.export.student_pipeline.StudentPipeline`).

Usage::

    python -m benchmarks.export_roundtrip [--out benchmarks/results] [--cases NAME ...]

Writes ``export_roundtrip.json`` (``cases``: ``name``, ``imports_fewstep``, ``max_abs_diff``
(card images vs the in-memory student's), ``images_equal``, ``bytes`` of the export, ...) and
``export_roundtrip.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn

from fewstep.export.diffusers_export import export_student
from fewstep.export.model_card import snippet_from_card
from fewstep.export.student_pipeline import StudentPipeline
from fewstep.student.student import Student
from fewstep.testing import tiny_unet_config
from fewstep.testing.pipeline_fixtures import fixtures

PROMPTS = ["a red cat", "a photo of a big blue dog"]
LABELS = [3, 7]
SIGMAS = [1.0, 0.6]
SEED = 5
FAMILIES = ("zimage", "unet_eps")
#: pipeline families -> the tiny pipeline fixture (:func:`fewstep.testing.pipeline_fixtures`)
PIPELINES = {"zimage": "zimage", "sd": "sd15", "pixart": "pixart_sigma", "flux": "flux"}
GENERIC = ("sd", "pixart", "flux")
PARAMS = ("lora", "decoupled", "shared")
DTYPES = ("float32", "bfloat16")

#: runs first in the subprocess: every later ``import fewstep`` raises ImportError
BLOCK_FEWSTEP = "import sys\nsys.modules['fewstep'] = None\n"

DRIVER = '''
import json
import sys

import torch
from safetensors.torch import save_file

jobs = json.load(open(sys.argv[1]))
results = []
for job in jobs:
    try:
        import fewstep  # noqa: F401
        imports_fewstep = True
    except ImportError:
        imports_fewstep = False
    ns = {"__name__": "snippet"}
    exec(compile(open(job["snippet"]).read(), job["snippet"], "exec"), ns)
    out = ns["few_step"](job["inputs"], seed=job["seed"])
    images = out[0] if isinstance(out, tuple) else out  # unet_eps: (x0, x0); pipelines: images
    save_file({"images": images.float().contiguous().clone()}, job["out"])
    loaded = sorted(m for m, v in sys.modules.items() if m.split(".")[0] == "fewstep" and v)
    results.append({"imports_fewstep": imports_fewstep or bool(loaded)})
print(json.dumps(results))
'''


@dataclass
class Case:
    family: str
    parameterization: str
    dtype: str
    transition: str = "fresh"

    @property
    def name(self) -> str:
        tail = "" if self.transition == "fresh" else f"_{self.transition}"
        return f"{self.family}_{self.parameterization}_{self.dtype}{tail}"


def all_cases() -> list[Case]:
    cases = [Case(f, p, d) for f in FAMILIES for p in PARAMS for d in DTYPES]
    cases.append(Case("zimage", "lora", "float32", "ddim"))
    for f in GENERIC:
        cases += [Case(f, "lora", "float32"), Case(f, "decoupled", "float32"),
                  Case(f, "lora", "bfloat16")]
    cases += [Case("sd", "shared", "float32"), Case("sd", "decoupled", "float32", "ddim")]
    return cases


# ------------------------------------------------------------------------------ tiny teachers
def save_teacher(family: str, dtype: str, root: Path) -> Path:
    """Write a tiny teacher folder (``from_pretrained`` layout) once; returns it."""
    from diffusers import DDPMScheduler, UNet2DModel

    folder = root / f"{family}_{dtype}"
    if folder.is_dir():
        return folder
    dt = getattr(torch, dtype)
    if family in PIPELINES:
        pipe = fixtures()[PIPELINES[family]].build(0)
        for m in pipe.components.values():
            if isinstance(m, nn.Module):
                m.to(dt)
        pipe.save_pretrained(folder, safe_serialization=True)
        (root / "prompts.txt").write_text("\n".join(PROMPTS) + "\n")
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            unet = UNet2DModel(**tiny_unet_config(8, 1, num_class_embeds=11))
        unet.to(dt).save_pretrained(folder / "unet", safe_serialization=True)
        DDPMScheduler(num_train_timesteps=1000).save_pretrained(folder / "scheduler")
    return folder


@dataclass
class Teacher:
    denoiser: nn.Module
    config: dict[str, Any]
    pipeline: Any
    latent_shape: tuple[int, ...]
    num_classes: int
    loaded: Any = None  # the LoadedTeacher of a pipeline teacher (problem, codec)


def load_teacher(family: str, folder: Path, dtype: str) -> Teacher:
    """The frozen teacher as the trainer loads it, with the config export_student reads."""
    dt = getattr(torch, dtype)
    if family in PIPELINES:  # the generic reading, as ``teacher.kind: diffusers`` loads it
        from fewstep.teachers import load_teacher as load
        from fewstep.teachers.spec import TeacherSpec

        fx = fixtures()[PIPELINES[family]]
        t = load(TeacherSpec(kind="diffusers", pretrained=str(folder), dtype=dtype,
                             prompts=str(folder.parent / "prompts.txt"),
                             resolution=fx.resolution, steps=4, call_kwargs=fx.call_kwargs),
                 data="prompts", cache_dir=str(folder.parent / f"cache_{folder.name}"),
                 device="cpu")
        return Teacher(t.denoiser, t.config, t.pipeline, tuple(t.problem.data_shape), 0, t)
    from diffusers import DDPMScheduler, UNet2DModel

    from fewstep.teachers.diffusers.vp import VPEpsilonDenoiser

    unet = UNet2DModel.from_pretrained(folder, subfolder="unet", use_safetensors=True).to(dt)
    sched = DDPMScheduler.from_pretrained(folder, subfolder="scheduler")
    den = VPEpsilonDenoiser.from_scheduler(unet, sched, null_class=10)
    den.eval().requires_grad_(False)
    cfg = {"kind": "unet_eps", "pretrained": str(folder), "dtype": dtype, "null_class": 10}
    return Teacher(den, cfg, None, (1, 8, 8), 10)


def build_student(teacher: Teacher, case: Case) -> Student:
    """A student as the trainer builds it (trainables in float32), its steps made distinct."""
    torch.manual_seed(1)
    st = Student(teacher.denoiser, torch.tensor(SIGMAS), case.parameterization,  # type: ignore
                 case.transition, lora_rank=4, lora_alpha=8.0)
    for m in st.steps:
        m.float()
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for _, p in st.named_trainable_parameters():
            p.data = p.data.float()
            scale = 0.05 if case.parameterization == "lora" else 0.002
            p.add_(torch.randn(p.shape, generator=g) * scale)
    return st.eval()


def student_images(teacher: Teacher, st: Student, sp: StudentPipeline) -> torch.Tensor:
    """The in-memory student's images from ``SEED``, on the noise ``sp`` draws for it
    (pipeline teachers: decoded by the teacher's codec, about ``[-1, 1]``)."""
    n = len(PROMPTS) if teacher.pipeline is not None else len(LABELS)
    x, eps = sp._noises(n, torch.Generator().manual_seed(SEED))
    with torch.no_grad():
        if teacher.pipeline is None:
            return st.generate(x, torch.tensor(LABELS), step_noises=eps).sample.float()
        cond = teacher.loaded.problem.cond_map(torch.arange(n))
        x0 = st.generate(x, cond, step_noises=eps).sample
        return teacher.loaded.codec.decode(x0).float()


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def run_snippets(jobs: list[dict[str, Any]], workdir: Path) -> list[dict[str, Any]]:
    """Run each job's snippet in ONE fresh interpreter that cannot import fewstep."""
    job_file = workdir / "jobs.json"
    job_file.write_text(json.dumps(jobs))
    driver = workdir / "driver.py"
    driver.write_text(BLOCK_FEWSTEP + DRIVER)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONNOUSERSITE"] = "1"
    proc = subprocess.run([sys.executable, str(driver), str(job_file)],
                          cwd=workdir, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"snippet subprocess failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def prepare_case(case: Case, root: Path) -> dict[str, Any]:
    """Build, export and sample one case in this process; returns the job + references."""
    teacher = load_teacher(case.family, save_teacher(case.family, case.dtype, root / "teachers"),
                           case.dtype)
    st = build_student(teacher, case)
    out = root / "exports" / case.name
    export_student(st, out, teacher.config, teacher.pipeline, "auto", teacher.num_classes,
                   teacher.latent_shape)
    pipe = StudentPipeline.from_pretrained(out)
    images = student_images(teacher, st, pipe)
    with torch.no_grad():
        reload = pipe(PROMPTS, seed=SEED) if teacher.pipeline is not None else \
            pipe.decode(pipe.generate_latents(torch.tensor(LABELS), len(LABELS), SEED))
    snippet = root / "snippets" / f"{case.name}.py"
    snippet.parent.mkdir(parents=True, exist_ok=True)
    snippet.write_text(snippet_from_card((out / "README.md").read_text()))
    job = {"snippet": str(snippet), "seed": SEED, "out": str(root / "outputs" / f"{case.name}"
                                                             ".safetensors"),
           "inputs": PROMPTS if teacher.pipeline is not None else LABELS}
    (root / "outputs").mkdir(exist_ok=True)
    # the card's images: [0, 1] from a pipeline's __call__, the latents themselves for unet_eps
    card_ref = (images / 2 + 0.5).clamp(0, 1) if teacher.pipeline is not None else images
    return {"case": case, "job": job, "images": images, "card_reference": card_ref,
            "export": out, "reload_images": reload.float()}


def run(out_dir: Path | None, names: list[str] | None = None) -> dict[str, Any]:
    """Every case (or those in ``names``); writes the JSON + markdown when ``out_dir``."""
    torch.set_num_threads(min(2, torch.get_num_threads()))
    cases = [c for c in all_cases() if names is None or c.name in names]
    if names is not None and len(cases) != len(set(names)):
        raise SystemExit(f"unknown case names: {sorted(set(names) - {c.name for c in cases})}")
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        prepared = [prepare_case(c, root) for c in cases]
        results = run_snippets([p["job"] for p in prepared], root)
        rows = []
        for p, r in zip(prepared, results, strict=True):
            got = load_file(p["job"]["out"])["images"]
            case: Case = p["case"]
            rows.append({
                "name": case.name, "family": case.family,
                "parameterization": case.parameterization, "dtype": case.dtype,
                "transition": case.transition, "imports_fewstep": r["imports_fewstep"],
                "max_abs_diff": float((got - p["card_reference"]).abs().max()),
                "images_equal": bool(torch.equal(got, p["card_reference"])),
                "fewstep_reload_max_abs_diff": float((p["reload_images"] - p["images"])
                                                     .abs().max()),
                "bytes": folder_bytes(p["export"]),
                "files": sorted(str(f.relative_to(p["export"])) for f in p["export"].rglob("*")
                                if f.is_file()),
            })
    res = {"cases": rows, "seconds": time.perf_counter() - t0,
           "protocol": __doc__.split("Usage::")[0].strip()}
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "export_roundtrip.json").write_text(json.dumps(res, indent=1))
        (out_dir / "export_roundtrip.md").write_text(markdown(res))
    return res


def markdown(res: dict[str, Any]) -> str:
    lines = ["# Export round trip (snippet run without fewstep)", "",
             "| case | imports fewstep | card vs student (max abs) | images equal | "
             "fewstep reload vs student (max abs) | bytes |",
             "|---|---|---|---|---|---|"]
    for r in res["cases"]:
        lines.append(f"| {r['name']} | {r['imports_fewstep']} | {r['max_abs_diff']:.3g} | "
                     f"{r['images_equal']} | {r['fewstep_reload_max_abs_diff']:.3g} | "
                     f"{r['bytes']:,} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    ap.add_argument("--cases", nargs="*", default=None, help="case names (default: all)")
    args = ap.parse_args()
    res = run(args.out, args.cases)
    print(markdown(res))
    print(f"wrote {args.out}/export_roundtrip.json, export_roundtrip.md "
          f"({res['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
