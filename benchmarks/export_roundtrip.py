"""Export round trip: students exported by fewstep, sampled by plain diffusers without fewstep.

For every case (teacher family x parameterization x dtype) a tiny, randomly initialised teacher
is saved to disk (Z-Image and the eps-UNet through their own kinds; an SD-style UNet,
PixArt-Sigma and Flux pipeline through ``teacher.kind: diffusers``), a student is built from it
the way the trainer builds one (frozen teacher in ``dtype``, trainable weights in float32) and
its trainable weights are perturbed so that the steps differ, then
:func:`~fewstep.export.diffusers_export.export_student` writes the folder. The
loading snippet of the folder's ``README.md`` runs in a subprocess in which importing fewstep
fails (``sys.modules["fewstep"] = None`` before anything else; run from a folder without fewstep
and without ``PYTHONPATH``), and its latents and images are compared with

* the in-memory student (``Student.generate`` from the same seed, decoded by the teacher's VAE),
* fewstep's own reload (:class:`~fewstep.export.diffusers_export.StudentPipeline`).

Usage::

    python -m benchmarks.export_roundtrip [--out benchmarks/results] [--cases NAME ...]

Writes ``export_roundtrip.json`` (``cases``: ``name``, ``imports_fewstep``, ``max_abs_diff``
(latents, snippet vs in-memory student), ``images_equal``, ``bytes`` of the export, ...) and
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

import fewstep.testing as testing
from fewstep.core.conditioning import PromptEmbeds
from fewstep.export.diffusers_export import export_student
from fewstep.export.model_card import snippet_from_card
from fewstep.export.student_pipeline import StudentPipeline
from fewstep.student.student import Student
from fewstep.teachers.diffusers.adapter import (
    denoiser_of,
    family_of,
    latent_multiple,
    latent_shape,
    load_pipeline,
    pipeline_denoiser,
)
from fewstep.teachers.diffusers.families import FAMILIES as NETWORK_FAMILIES
from fewstep.teachers.diffusers.latents import decode
from fewstep.teachers.diffusers.prompt_cache import pipeline_encode_fn
from fewstep.teachers.diffusers.zimage import ZImageDenoiser
from fewstep.testing import build_tiny_zimage_pipeline, tiny_unet_config

PROMPTS = ["a red cat", "a photo of a big blue dog"]
LABELS = [3, 7]
SIGMAS = [1.0, 0.6]
SEED = 5
MAX_SEQ = 64
FAMILIES = ("zimage", "unet_eps")
#: ``teacher.kind: diffusers`` families: name -> (tiny pipeline builder, resolution, max tokens)
GENERIC = {"sd": ("build_tiny_sd_pipeline", 16, 16),
           "pixart": ("build_tiny_pixart_pipeline", 16, 16),
           "flux": ("build_tiny_flux_pipeline", 16, 16)}
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
    images, x0 = ns["few_step"](job["inputs"], seed=job["seed"])
    out = {"images": images.float().contiguous().clone(), "x0": x0.float().contiguous().clone()}
    if job.get("stock"):  # the README's stock-pipeline block, after the loading snippet
        exec(compile(open(job["stock"]).read(), job["stock"], "exec"), ns)
        out["stock"] = ns["stock_few_step"](job["inputs"], seed=job["seed"]).float().clone()
    save_file(out, job["out"])
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
def tiny_zimage_pipeline() -> Any:
    """The tiny offline Z-Image pipeline."""
    return build_tiny_zimage_pipeline(seed=0)


def save_teacher(family: str, dtype: str, root: Path) -> Path:
    """Write a tiny teacher folder (``from_pretrained`` layout) once; returns it."""
    from diffusers import DDPMScheduler, UNet2DModel

    folder = root / f"{family}_{dtype}"
    if folder.is_dir():
        return folder
    dt = getattr(torch, dtype)
    if family in GENERIC:
        pipe = getattr(testing, GENERIC[family][0])(seed=0)
        for m in pipe.components.values():
            if isinstance(m, nn.Module):
                m.to(dt)
        pipe.save_pretrained(folder, safe_serialization=True)
    elif family == "zimage":
        pipe = tiny_zimage_pipeline()
        for name in ("transformer", "text_encoder", "vae"):
            getattr(pipe, name).to(dt)
        pipe.save_pretrained(folder, safe_serialization=True)
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


def load_teacher(family: str, folder: Path, dtype: str) -> Teacher:
    """The frozen teacher as the trainer loads it, with the config export_student reads."""
    dt = getattr(torch, dtype)
    if family in GENERIC:  # as DiffusersTeacher.from_pipeline builds it
        pipe = load_pipeline(str(folder), dtype)
        for m in pipe.components.values():
            if isinstance(m, nn.Module):
                m.eval().requires_grad_(False)
        net = denoiser_of(pipe)
        den = pipeline_denoiser(pipe, net, family_of(net), None).eval().requires_grad_(False)
        _, res, max_seq = GENERIC[family]
        shape = latent_shape(pipe.vae.config, latent_multiple(net), res)
        cfg = {"kind": "diffusers", "pretrained": str(folder), "dtype": dtype,
               "resolution": res, "latent_shape": list(shape), "max_sequence_length": max_seq,
               "pipeline_class": type(pipe).__name__, "family": type(net).__name__}
        return Teacher(den, cfg, pipe, shape, 0)
    if family == "zimage":
        pipe = load_pipeline(str(folder), dtype)
        for m in (pipe.transformer, pipe.text_encoder, pipe.vae):
            m.eval().requires_grad_(False)
        den = ZImageDenoiser.from_pipeline(pipe, max_sequence_length=MAX_SEQ)
        shape = (16, 8, 8)
        cfg = {"kind": "zimage", "pretrained": str(folder), "dtype": dtype, "resolution": 16,
               "latent_shape": list(shape), "max_sequence_length": MAX_SEQ}
        return Teacher(den, cfg, pipe, shape, 0)
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


def student_inputs(teacher: Teacher, st: Student) -> tuple[Any, torch.Tensor]:
    """(cond, latents) of the in-memory student from ``SEED`` (StudentPipeline's protocol)."""
    if teacher.pipeline is not None:
        cond: Any = encode_prompts(teacher, PROMPTS)
        n = len(PROMPTS)
    else:
        cond = torch.tensor(LABELS)
        n = len(LABELS)
    g = torch.Generator().manual_seed(SEED)
    noise = torch.randn((n, *teacher.latent_shape), generator=g)
    with torch.no_grad():
        return cond, st.generate(noise, cond, generator=g).sample


def encode_prompts(teacher: Teacher, prompts: list[str]) -> PromptEmbeds:
    """The teacher pipeline's prompt embeddings as the trainer conditions the network."""
    fam = NETWORK_FAMILIES.get(teacher.config.get("family", ""))
    fn = pipeline_encode_fn(teacher.pipeline, teacher.config["max_sequence_length"], "cpu",
                            fam.mask_index if fam else None, fam.pooled_index if fam else None)
    rows = fn(list(prompts))
    if isinstance(rows[0], tuple):
        return PromptEmbeds.from_list([r[0] for r in rows], [r[1] for r in rows])
    return PromptEmbeds.from_list(rows)


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
    _, latents = student_inputs(teacher, st)
    with torch.no_grad():
        images = decode(teacher.pipeline.vae, latents).float() if teacher.pipeline is not None \
            else latents
        pipe = StudentPipeline.from_pretrained(out)
        reload = pipe(PROMPTS, seed=SEED) if teacher.pipeline is not None else \
            pipe.decode(pipe.generate_latents(torch.tensor(LABELS), len(LABELS), SEED))
    snippet = root / "snippets" / f"{case.name}.py"
    snippet.parent.mkdir(parents=True, exist_ok=True)
    card = (out / "README.md").read_text()
    snippet.write_text(snippet_from_card(card))
    job = {"snippet": str(snippet), "seed": SEED, "out": str(root / "outputs" / f"{case.name}"
                                                             ".safetensors"),
           "inputs": PROMPTS if teacher.pipeline is not None else LABELS}
    (root / "outputs").mkdir(exist_ok=True)
    if card.count("```python") > 1:
        stock = snippet.with_name(f"{case.name}_stock.py")
        stock.write_text(snippet_from_card(card, 1))
        job["stock"] = str(stock)
    return {"case": case, "job": job, "latents": latents, "images": images, "export": out,
            "reload_images": reload.float()}


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
            got = load_file(p["job"]["out"])
            case: Case = p["case"]
            rows.append({
                "name": case.name, "family": case.family,
                "parameterization": case.parameterization, "dtype": case.dtype,
                "transition": case.transition, "imports_fewstep": r["imports_fewstep"],
                "max_abs_diff": float((got["x0"] - p["latents"].float()).abs().max()),
                "images_max_abs_diff": float((got["images"] - p["images"]).abs().max()),
                "images_equal": bool(torch.equal(got["images"], p["images"])),
                "fewstep_reload_images_equal": bool(torch.equal(p["reload_images"],
                                                                p["images"])),
                "stock_pipeline_max_abs_diff": float((got["stock"] - p["latents"]).abs().max())
                if "stock" in got else None,
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
             "| case | imports fewstep | max abs diff (latents) | images equal | "
             "fewstep reload equal | stock pipeline diff | bytes |",
             "|---|---|---|---|---|---|---|"]
    for r in res["cases"]:
        stock = "—" if r["stock_pipeline_max_abs_diff"] is None else \
            f"{r['stock_pipeline_max_abs_diff']:.3g}"
        lines.append(f"| {r['name']} | {r['imports_fewstep']} | {r['max_abs_diff']:.3g} | "
                     f"{r['images_equal']} | {r['fewstep_reload_images_equal']} | {stock} | "
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
