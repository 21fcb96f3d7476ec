"""ZImageDenoiser: conversions, CFG convention, pipeline agreement, features, precision."""

from __future__ import annotations

import copy

import torch

from fewstep.core.conditioning import PromptEmbeds
from fewstep.core.guidance import w_from_zimage_scale
from fewstep.core.samplers import euler_sample
from fewstep.distill.config import DistillConfig, load_run_teacher
from fewstep.teachers.diffusers.zimage import ZImageDenoiser
from fewstep.testing.tiny_pipelines import TINY_MAX_SEQ, tiny_latents
from fewstep.utils.config_files import validate


def _raw_by_hand(transformer, x, sigma, feats):
    """Call the transformer exactly like ZImagePipeline does; returns -v as (B, C, H, W)."""
    t = (1000.0 - sigma * 1000.0) / 1000.0
    out = transformer(list(x.unsqueeze(2).unbind(0)), t, feats, return_dict=False)[0]
    return torch.stack(out).squeeze(2)


@torch.no_grad()
def test_x0_equals_hand_conversion(zden, prompt_cond):
    x = tiny_latents()
    sigma = torch.tensor([0.25, 0.8])
    raw = _raw_by_hand(zden.transformer, x, sigma, prompt_cond.to_list())
    x0_hand = x + sigma[:, None, None, None] * raw  # x0 = x - sigma v, raw = -v
    x0 = zden(x, sigma, prompt_cond)
    assert x0.shape == x.shape
    torch.testing.assert_close(x0, x0_hand, rtol=1e-5, atol=1e-5)
    # velocity implied by x0 is -raw
    torch.testing.assert_close(zden.velocity(x, sigma, prompt_cond), -raw, rtol=1e-4, atol=1e-4)
    # a scalar sigma broadcasts; a single-row cond broadcasts over the batch
    torch.testing.assert_close(zden(x, 0.5, prompt_cond[0]),
                               zden(x, torch.tensor([0.5, 0.5]), prompt_cond[[0, 0]]))


@torch.no_grad()
def test_cfg_matches_zimage_guidance_scale(zden, prompt_cond):
    x = tiny_latents(seed=1)
    sigma = torch.tensor([0.9, 0.4])
    g = 2.5
    pos = _raw_by_hand(zden.transformer, x, sigma, prompt_cond.to_list())
    neg = _raw_by_hand(zden.transformer, x, sigma, [zden.null_embeds] * 2)
    pred = pos + g * (pos - neg)  # ZImagePipeline's CFG on the raw output
    v = -pred
    x0_pipe = x - sigma[:, None, None, None] * v
    torch.testing.assert_close(zden.guided_zimage_scale(x, sigma, prompt_cond, g), x0_pipe,
                               rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(zden.guided(x, sigma, prompt_cond, w_from_zimage_scale(g)),
                               x0_pipe, rtol=1e-4, atol=1e-4)
    # the batched implementation equals the generic two-forward Denoiser.guided
    w = 1.0 + g
    two = zden(x, sigma, zden.null_cond(prompt_cond))
    two = two + w * (zden(x, sigma, prompt_cond) - two)
    torch.testing.assert_close(zden.guided(x, sigma, prompt_cond, w), two, rtol=1e-4, atol=1e-4)


@torch.no_grad()
def test_euler_sampler_matches_pipeline(tiny_pipe, zden):
    prompts = ["a red cat", "two green birds"]
    noise = tiny_latents(seed=2)  # 16x16 latents <-> 32x32 images (VAE factor 2, patch 2)
    g = 1.5
    # ZImagePipeline.encode_prompt rewrites the caller's prompt list in place: pass copies
    lat = tiny_pipe(prompt=list(prompts), height=16, width=16, num_inference_steps=3,
                    guidance_scale=g, latents=noise.clone(), output_type="latent",
                    max_sequence_length=TINY_MAX_SEQ).images
    sigmas = tiny_pipe.scheduler.sigmas.clone()  # includes the trailing 0
    pos, _ = tiny_pipe.encode_prompt(list(prompts), device="cpu",
                                     do_classifier_free_guidance=False,
                                     max_sequence_length=TINY_MAX_SEQ)
    traj = euler_sample(zden, noise, PromptEmbeds.from_list(pos), sigmas,
                        cfg_scale=w_from_zimage_scale(g))
    torch.testing.assert_close(traj.sample, lat, rtol=1e-3, atol=1e-3)


def test_features_shapes_and_gradient(zden, prompt_cond):
    x = tiny_latents().requires_grad_(True)
    feats = zden.features(x, torch.tensor([0.3, 0.7]), prompt_cond)
    n_layers = len(zden.transformer.layers)
    assert len(feats) == n_layers
    for f in feats:
        assert f.shape == (2, (8 // 2) * (8 // 2), zden.transformer.config.dim)
    sum(f.square().mean() for f in feats).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    # hooks are removed afterwards
    assert all(len(layer._forward_hooks) == 0 for layer in zden.transformer.layers)


def test_gradient_checkpointing_same_output_and_grads(zden, prompt_cond):
    den = copy.deepcopy(zden).train().requires_grad_(True)
    x = tiny_latents(seed=3)
    sigma = torch.tensor([0.6, 0.2])

    def grads():
        den.zero_grad(set_to_none=True)
        out = den(x, sigma, prompt_cond)
        out.square().mean().backward()
        return out.detach(), [p.grad.clone() for p in den.transformer.layers.parameters()]

    out0, g0 = grads()
    den.set_gradient_checkpointing(True)
    assert den.transformer.gradient_checkpointing
    out1, g1 = grads()
    den.set_gradient_checkpointing(False)
    assert not den.transformer.gradient_checkpointing
    torch.testing.assert_close(out0, out1)
    for a, b in zip(g0, g1, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


@torch.no_grad()
def test_bf16_autocast_and_bf16_weights(zden, prompt_cond):
    x = tiny_latents(seed=4)
    sigma = torch.tensor([0.5, 0.5])
    ref = zden(x, sigma, prompt_cond)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = zden(x, sigma, prompt_cond)
    assert out.dtype == x.dtype and torch.isfinite(out).all()
    assert (out - ref).abs().mean() < 0.05 * ref.abs().mean() + 1e-3
    # bf16 weights: inputs are cast to the model's dtype, output back to x's dtype
    den16 = ZImageDenoiser(copy.deepcopy(zden.transformer).to(torch.bfloat16))
    out16 = den16(x, sigma, prompt_cond)
    assert out16.dtype == torch.float32 and torch.isfinite(out16).all()
    assert (out16 - ref).abs().mean() < 0.05 * ref.abs().mean() + 1e-3


@torch.no_grad()
def test_from_pretrained_kind_zimage_reads_the_pipeline(tiny_pipe, tmp_path):
    """``teacher.kind: zimage`` loads through the generic pipeline reading (frozen network;
    its equivalence with ``__call__`` is tests/teachers/diffusers/test_teacher_check.py)."""
    tiny_pipe.save_pretrained(tmp_path / "tiny")
    (tmp_path / "p.txt").write_text("a red cat\n")
    cfg = validate(DistillConfig, {"data": "prompts", "teacher": {
        "kind": "zimage", "pretrained": str(tmp_path / "tiny"),
        "prompts": str(tmp_path / "p.txt"), "resolution": 32,
        "max_sequence_length": TINY_MAX_SEQ}, "cache": {"dir": str(tmp_path / "c")}})
    teacher = load_run_teacher(cfg, "cpu")
    den = teacher.denoiser
    assert all(not p.requires_grad for p in den.parameters())
    assert type(den.network).__name__ == "ZImageTransformer2DModel"
    x = torch.randn(2, *teacher.problem.data_shape)
    cond = teacher.problem.cond_map(torch.tensor([0, 0]))
    out = den(x, torch.tensor([0.9, 0.1]), cond)
    assert out.shape == x.shape and torch.isfinite(out).all()


def test_prompt_embeds_container():
    a, b = torch.randn(3, 4), torch.randn(5, 4)
    pe = PromptEmbeds.from_list([a, b])
    assert pe.embeds.shape == (2, 5, 4) and pe.mask.sum().item() == 8
    la, lb = pe.to_list()
    assert torch.equal(la, a) and torch.equal(lb, b)
    both = PromptEmbeds.cat([pe[1], pe[0]])
    assert torch.equal(both.to_list()[0], b) and torch.equal(both.to_list()[1], a)
    assert len(pe.repeat(2)) == 4 and torch.equal(pe.repeat_interleave(2).to_list()[1], a)
    assert pe.to(dtype=torch.bfloat16).mask.dtype == torch.bool
