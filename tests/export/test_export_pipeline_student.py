"""Generic export of pipeline-teacher students (issue #21): ``export_student`` writes a folder
whose model card samples with the stock pipeline's own ``__call__`` (``StudentScheduler``, the
per-step networks / adapters switched by it) in a process where ``import fewstep`` fails; its
images equal ``StudentPipeline`` (what ``fewstep sample --student`` runs) on the same noise, and
the reloaded student equals the in-memory one."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from fewstep.export.diffusers_export import export_student
from fewstep.export.model_card import snippet_from_card
from fewstep.export.student_pipeline import StudentPipeline
from fewstep.student.student import Student
from fewstep.teachers import load_teacher
from fewstep.teachers.spec import TeacherSpec
from fewstep.testing.pipeline_fixtures import fixtures

PROMPTS = ["a red cat", "the green tree"]


@pytest.mark.parametrize(("name", "param", "transition"),
                         [("zimage", "lora", "fresh"), ("sd21", "decoupled", "ddim")])
def test_card_code_equals_fewstep_sample(tmp_path: Path, name: str, param: str,
                                         transition: str) -> None:
    fx = fixtures()[name]
    folder = tmp_path / name
    fx.build(0).save_pretrained(folder, safe_serialization=True)
    (tmp_path / "prompts.txt").write_text("\n".join(PROMPTS) + "\n")
    t = load_teacher(TeacherSpec(kind="diffusers", pretrained=str(folder),
                                 prompts=str(tmp_path / "prompts.txt"), resolution=fx.resolution,
                                 steps=4, call_kwargs=fx.call_kwargs),
                     data="prompts", cache_dir=str(tmp_path / "cache"), device="cpu")
    torch.manual_seed(1)
    st = Student(t.denoiser, torch.tensor([1.0, 0.6]), param, transition, lora_rank=4,
                 lora_alpha=8.0)
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():  # move the student off the teacher so the steps differ
        for _, p in st.named_trainable_parameters():
            p.add_(torch.randn(p.shape, generator=g) * (0.05 if param == "lora" else 0.002))
    st.eval()
    out = tmp_path / "export"
    export_student(st, out, t.config, t.pipeline, "auto", 0, tuple(t.problem.data_shape))

    sp = StudentPipeline.from_pretrained(out)
    ours = sp(PROMPTS, seed=5)  # (B, 3, H, W) in [-1, 1]
    x, eps = sp._noises(2, torch.Generator().manual_seed(5))
    with torch.no_grad():
        mem = st.generate(x, t.problem.cond_map(torch.tensor([0, 1])), step_noises=eps).sample
        mem_img = t.codec.decode(mem).float()
    assert (ours - mem_img).abs().max() < 1e-5

    code = snippet_from_card((out / "README.md").read_text())
    script = out / "card.py"
    script.write_text("import sys\nsys.modules['fewstep'] = None  # import fewstep fails\n" + code
                      + f"\nfrom safetensors.torch import save_file\nimg = few_step({PROMPTS!r}, "
                      f"seed=5)\nsave_file({{'img': img.float().contiguous()}}, "
                      f"{str(out / 'card.safetensors')!r})\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, str(script)], cwd=out, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    card = load_file(str(out / "card.safetensors"))["img"]
    assert float((card - (ours / 2 + 0.5).clamp(0, 1)).abs().max()) < 1e-4
