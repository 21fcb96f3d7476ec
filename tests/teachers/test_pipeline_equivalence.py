"""``teacher.kind: diffusers`` through the run config (``load_run_teacher``, what the trainer
uses): the teacher's N-step sampler (``LoadedTeacher.sample``, levels ``pipeline``) equals each
pipeline's own ``__call__`` on the same prompts, noise and guidance (fp32, latents). The check
at every family's *default* call arguments is tests/teachers/diffusers/test_teacher_check.py."""

from __future__ import annotations

import pytest
import torch
from teachers_helpers import FAMILY_SPECS, PROMPTS, diffusers_cfg

from fewstep.distill.config import load_run_teacher
from fewstep.teachers.diffusers.layouts import pack_2x2, unpack_2x2

STEPS, G = 4, 3.0


def _pipeline_latents(family: str, pipe, noise: torch.Tensor, res: int, max_seq: int
                      ) -> torch.Tensor:
    kw = {"num_inference_steps": STEPS, "output_type": "latent", "height": res, "width": res,
          "prompt": PROMPTS[:2]}
    if family == "zimage":
        return pipe(guidance_scale=G, latents=noise, max_sequence_length=max_seq, **kw).images
    if family == "sd":
        return pipe(guidance_scale=G, latents=noise, **kw).images
    if family == "pixart":
        return pipe(negative_prompt="", guidance_scale=G, latents=noise, clean_caption=False,
                    use_resolution_binning=False, max_sequence_length=max_seq, **kw).images
    out = pipe(negative_prompt="", true_cfg_scale=G, latents=pack_2x2(noise),
               max_sequence_length=max_seq, **kw).images
    return unpack_2x2(out, noise.shape[3] / noise.shape[2])


@pytest.mark.parametrize("family", list(FAMILY_SPECS))
@torch.no_grad()
def test_teacher_sampler_equals_pipeline_call(saved_pipelines, family):
    _, res, max_seq = FAMILY_SPECS[family]
    # PixArt's aspect-ratio binning snaps a 16 px image to a >= 256 px bin: off, as below
    kw = {"use_resolution_binning": False} if family == "pixart" else {}
    loaded = load_run_teacher(diffusers_cfg(saved_pipelines, family, res, max_seq,
                                            teacher={"call_kwargs": kw}), "cpu")
    assert loaded.config["family"] == type(getattr(
        loaded.pipeline, "transformer", getattr(loaded.pipeline, "unet", None))).__name__
    noise = torch.randn((2, *loaded.problem.data_shape),
                        generator=torch.Generator().manual_seed(1))
    w = G + (1.0 if family == "zimage" else 0.0)  # Z-Image writes pos + g (pos - neg)
    cond = loaded.problem.cond_map(torch.tensor([0, 1]))
    ours = loaded.sample(noise, cond, w).sample
    ref = _pipeline_latents(family, loaded.pipeline, noise, res, max_seq)
    diff = (ours - ref).abs().max().item()
    scale = ref.std().item()
    print(f"{family}: max|fewstep - pipeline| = {diff:.3e}, latent std {scale:.3f}")
    assert torch.isfinite(ref).all() and scale > 0
    assert diff <= 1e-4 * scale


def test_schedules_uniform_pipeline_and_list(saved_pipelines):
    """``pipeline`` is the scheduler's own levels: for a static shift they equal fewstep's
    uniform ``shift(linspace(1, 0, N + 1))``; with Flux's dynamic (exponential, ``mu``) shift
    they do not, and ``uniform`` ignores ``mu``. A list is taken as is."""
    _, res, max_seq = FAMILY_SPECS["zimage"]
    z_uni = load_run_teacher(diffusers_cfg(saved_pipelines, "zimage", res, max_seq,
                                       teacher={"levels": "uniform"}), "cpu").sigmas
    z_own = load_run_teacher(diffusers_cfg(saved_pipelines, "zimage", res, max_seq), "cpu").sigmas
    u = torch.linspace(1, 0, 5)
    torch.testing.assert_close(z_own, 3.0 * u / (1 + 2.0 * u))  # shift 3
    torch.testing.assert_close(z_uni, z_own)
    _, res, max_seq = FAMILY_SPECS["flux"]
    f_uni = load_run_teacher(diffusers_cfg(saved_pipelines, "flux", res, max_seq,
                                       teacher={"levels": "uniform"}), "cpu").sigmas
    f_own = load_run_teacher(diffusers_cfg(saved_pipelines, "flux", res, max_seq), "cpu").sigmas
    mu = 0.5 + (1.15 - 0.5) / (4096 - 256) * (16 - 256)  # 16 image tokens (8x8 latents, 2x2)
    want = torch.exp(torch.tensor(mu)) / (torch.exp(torch.tensor(mu)) + (1 / u[:-1] - 1))
    torch.testing.assert_close(f_own[:-1], want)
    torch.testing.assert_close(f_uni, u)
    listed = diffusers_cfg(saved_pipelines, "zimage", FAMILY_SPECS["zimage"][1], 64,
                           teacher={"levels": [1.0, 0.6, 0.3, 0.1, 0.0]})
    assert load_run_teacher(listed, "cpu").sigmas.tolist() == pytest.approx([1, .6, .3, .1, 0])
