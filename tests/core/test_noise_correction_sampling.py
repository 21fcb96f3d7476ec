"""Noise correction as a sampler option: defaults per teacher kind, teacher and student samplers
on a zero-terminal-SNR epsilon teacher (the ``toy_eps_teacher_path`` fixture), the eval names
``_nc`` / ``_naive``, and like-for-like timing."""

from __future__ import annotations

import pytest
import torch

from fewstep.core.denoiser import Denoiser
from fewstep.core.levels import student_sigmas, teacher_sigmas
from fewstep.core.noise_correction import (
    corrected_student_step,
    default_noise_correction,
    is_zero_terminal_snr,
    noise_corrected,
)
from fewstep.core.samplers import euler_sample, student_sample
from fewstep.data.problem import get_problem
from fewstep.errors import ConfigError, NonFiniteError
from fewstep.evaluation.evaluate import SamplerSpec, evaluate_samplers, parse_sampler, time_samplers
from fewstep.evaluation.toy_metrics import sliced_wasserstein
from fewstep.student.student import Student
from fewstep.teachers.training import load_denoiser


def _noise(n: int = 2000, seed: int = 5) -> torch.Tensor:
    return torch.randn(n, 2, generator=torch.Generator().manual_seed(seed))


def test_default_is_on_only_for_zero_terminal_snr_epsilon_models(toy_eps_teacher_path,
                                                                 toy_teacher_path):
    eps, _ = load_denoiser(toy_eps_teacher_path)
    vel, _ = load_denoiser(toy_teacher_path)
    assert is_zero_terminal_snr(eps) and default_noise_correction(eps)
    assert not default_noise_correction(vel)
    assert not default_noise_correction(noise_corrected(eps))  # already corrected: no re-wrap


def test_vp_adapter_default_follows_the_terminal_snr():
    diffusers = pytest.importorskip("diffusers")
    from fewstep.teachers.diffusers.vp import VPEpsilonDenoiser
    from fewstep.testing.tiny_pipelines import tiny_unet_config

    unet = diffusers.UNet2DModel.from_config(tiny_unet_config(8, 1))
    usual = diffusers.DDPMScheduler(num_train_timesteps=100)             # abar_T ~ 4e-3
    zero = diffusers.DDPMScheduler(num_train_timesteps=100, rescale_betas_zero_snr=True)
    assert not default_noise_correction(VPEpsilonDenoiser.from_scheduler(unet, usual))
    assert default_noise_correction(VPEpsilonDenoiser.from_scheduler(unet, zero))
    v = diffusers.DDPMScheduler(num_train_timesteps=100, rescale_betas_zero_snr=True,
                                prediction_type="v_prediction")
    assert not default_noise_correction(VPEpsilonDenoiser.from_scheduler(unet, v))


def test_teacher_sampler_corrects_by_default(toy_eps_teacher_path, toy_teacher_path):
    eps, _ = load_denoiser(toy_eps_teacher_path)
    noise = _noise(256)
    for n in (1, 2):
        sig = teacher_sigmas(n)
        naive = euler_sample(eps, noise, None, sig, noise_correction=False).sample
        default = euler_sample(eps, noise, None, sig).sample
        assert not torch.isfinite(naive).all()                         # 0/0 at sigma = 1
        assert torch.isfinite(default).all()
        torch.testing.assert_close(default, euler_sample(noise_corrected(eps), noise, None,
                                                         sig).sample)
    vel, _ = load_denoiser(toy_teacher_path)  # velocity: the option changes nothing
    assert torch.equal(euler_sample(vel, noise, None, teacher_sigmas(2), noise_correction=True)
                       .sample, euler_sample(vel, noise, None, teacher_sigmas(2)).sample)


def _eps_student(path, k: int = 2, parameterization: str = "decoupled") -> Student:
    den, _ = load_denoiser(path)
    return Student(den, student_sigmas(k, 8, 1.0), parameterization, "fresh").eval()


@pytest.mark.parametrize("parameterization", ["decoupled", "shared", "lora"])
def test_student_sampler_corrects_the_first_step(toy_eps_teacher_path, parameterization):
    if parameterization == "lora":
        pytest.importorskip("peft")
    st = _eps_student(toy_eps_teacher_path, 2, parameterization)
    noise = _noise(128)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        naive = student_sample(st, noise, None, noise_correction=False,
                               generator=torch.Generator().manual_seed(1)).sample
        default = student_sample(st, noise, None, generator=g).sample
    assert not torch.isfinite(naive).all()
    assert torch.isfinite(default).all()
    # below sigma = 1 the corrected step is the student's own step exactly
    x, s = noise, torch.full((128,), 0.5)
    torch.testing.assert_close(corrected_student_step(st, 1, x, s), st(1, x, s))


def test_student_can_be_trained_through_the_correction(toy_eps_teacher_path):
    """A 1-step epsilon student regressing the (corrected) 8-step teacher through the corrected
    step: finite gradients, and the SWD to held-out data falls. The correction multiplies the
    network's error by ``s' / (1 - s') = 19``, so the learning rate is ~20x below the usual
    (at 1e-3 and 1e-4 this run diverges)."""
    teacher, _ = load_denoiser(toy_eps_teacher_path)
    st = _eps_student(toy_eps_teacher_path, 1).train()
    held, _ = get_problem("checkerboard").split("heldout")
    noise_eval = _noise(2000, seed=9)

    def swd() -> float:
        with torch.no_grad():
            x = student_sample(st, noise_eval, None).sample
        return sliced_wasserstein(x, held, generator=torch.Generator().manual_seed(0))

    before = swd()
    opt = torch.optim.Adam(st.parameters(), lr=3e-5)
    g = torch.Generator().manual_seed(0)
    for _ in range(60):
        e = torch.randn(256, 2, generator=g)
        with torch.no_grad():
            target = euler_sample(teacher, e, None, teacher_sigmas(8)).sample
        out = corrected_student_step(st, 0, e, torch.ones(256))
        loss = (out - target).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        assert all(torch.isfinite(p.grad).all() for p in st.parameters() if p.grad is not None)
        opt.step()
    after = swd()
    print({"swd_before": before, "swd_after": after})
    assert after < 0.9 * before, (before, after)


def test_sampler_names_with_noise_correction_suffix(toy_eps_teacher_path):
    assert parse_sampler("student_2_nc") == SamplerSpec("student", 2, True)
    assert parse_sampler("teacher_1_naive") == SamplerSpec("teacher", 1, False)
    assert parse_sampler("teacher_8").name == "teacher_8"
    with pytest.raises(ConfigError):
        parse_sampler("teacher_2_fixed")
    den, _ = load_denoiser(toy_eps_teacher_path)
    m, samples = evaluate_samplers(get_problem("checkerboard"), ["teacher_2", "teacher_2_nc"],
                                   den, num_samples=500, timing=False)
    assert torch.equal(samples["teacher_2"], samples["teacher_2_nc"])  # default is on
    assert m["teacher_2_nc"]["nfe"] == 3  # the correction's extra call at sigma = 1
    # without the correction the first step is 0/0: an error naming the sampler, not NaNs
    with pytest.raises(NonFiniteError, match="teacher_2_naive"):
        evaluate_samplers(get_problem("checkerboard"), ["teacher_2_naive"], den,
                          num_samples=500, timing=False)


class CountingDenoiser(Denoiser):
    """A real denoiser wrapper that records the batch size of every call."""

    def __init__(self, inner: Denoiser) -> None:
        super().__init__()
        self.inner = inner
        self.batches: list[int] = []

    def forward(self, x, sigma, cond=None):
        self.batches.append(x.shape[0])
        return self.inner(x, sigma, cond)


def test_timing_is_like_for_like(toy_teacher_path):
    den, _ = load_denoiser(toy_teacher_path)
    counting = CountingDenoiser(den)
    specs = [SamplerSpec("teacher", 8), SamplerSpec("teacher", 2)]
    secs = time_samplers(specs, _noise(1000), None, counting, batch_size=100, repeats=3,
                         warmup=1)
    assert set(secs) == {"teacher_8", "teacher_2"}
    assert all(v["seconds_per_image"] > 0 and v["cpu_seconds_per_image"] > 0
               for v in secs.values())
    # one warm-up round + 3 timed rounds; per round teacher_8 once and teacher_2 four times
    # (equal network calls per timed unit), all on the same 100 rows
    assert len(counting.batches) == 4 * (8 + 4 * 2)
    assert set(counting.batches) == {100}


def test_distilling_a_zero_snr_epsilon_teacher_trains_through_the_correction(
        toy_eps_teacher_path, tmp_path):
    """The recipes' first student step at sigma = 1 would be 0/0 (NaN at the first update); the
    student uses the noise-corrected prediction there instead (formerly a refusal), so the run
    trains and its samples are finite (every recipe:
    tests/distill/test_noise_correction_training.py)."""
    from fewstep.distill.config import DistillConfig
    from fewstep.distill.trainer import Trainer
    from fewstep.utils.config_files import validate

    cfg = validate(DistillConfig, {
        "method": "regression", "data": "checkerboard",
        "teacher": {"path": str(toy_eps_teacher_path), "steps": 4},
        "cache": {"dir": str(tmp_path / "cache"), "size": 16, "shard_size": 16},
        "train": {"iterations": 2, "batch_size": 8}})
    tr = Trainer(cfg, tmp_path / "eps", progress=False)
    assert tr.student.noise_correction
    tr.train()
    assert all(torch.isfinite(torch.as_tensor(v)) for h in tr.losses.history for v in h.values())
    assert torch.isfinite(student_sample(tr.ema, _noise(64), None).sample).all()
