"""Imagine Flash: backward distillation inputs, the shifted reconstruction loss' target level,
noise correction for epsilon-prediction teachers, and a short run on the 2-D toy."""

import pytest
import torch

from fewstep.core.denoiser import Denoiser
from fewstep.core.levels import teacher_sigmas
from fewstep.core.noise_correction import NoiseCorrected, noise_corrected
from fewstep.core.path import FlowPath
from fewstep.core.samplers import euler_sample
from fewstep.data.problem import get_problem
from fewstep.distill.context import Batch
from fewstep.distill.methods.imagine_flash import ImagineFlash
from fewstep.evaluation.toy_metrics import sliced_wasserstein
from fewstep.networks.registry import network_denoiser
from fewstep.student import student as student_mod
from fewstep.student.student import unroll_to_step
from fewstep.teachers.training import load_denoiser
from fewstep.testing.toys import toy_config, toy_context, toy_denoiser


class Recorder(Denoiser):
    """Wraps a denoiser and records ``(x, sigma)`` of every call."""

    def __init__(self, inner: Denoiser) -> None:
        super().__init__()
        self.inner = inner
        self.calls: list[tuple[torch.Tensor, torch.Tensor]] = []

    def forward(self, x, sigma, cond=None):
        self.calls.append((x.detach().clone(), torch.as_tensor(sigma).detach().clone()))
        return self.inner(x, sigma, cond)


def _method(**spec) -> tuple[ImagineFlash, Recorder]:
    den = toy_denoiser()
    teacher = Recorder(den)
    ctx = toy_context(toy_config("imagine_flash", imagine_flash=spec), den, [1.0, 0.6, 0.3],
                      teacher=teacher)
    return ImagineFlash(ctx), teacher


def _noise(n: int = 8) -> torch.Tensor:
    return torch.randn(n, 2, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("k", [0, 1, 2])
def test_srl_target_is_taken_at_beta_of_the_step_level(k, monkeypatch):
    m, teacher = _method(tau_min=0.2, tau_max=0.7, beta_power=2.0)
    assert not m.needs_teacher_pairs and not m.needs_real  # no data, no teacher pairs
    monkeypatch.setattr(student_mod, "random_step", lambda student, generator=None: k)
    _, logs = m.generator_loss(Batch(_noise(), None), 0)
    sigma_k = float(m.ctx.student.sigmas[k])
    tau = 0.2 + 0.5 * sigma_k**2
    assert len(teacher.calls) == 1
    torch.testing.assert_close(teacher.calls[0][1], torch.full((8,), tau))
    assert abs(float(logs["tau"]) - tau) < 1e-6


def test_backward_distillation_inputs_and_renoising_on_the_students_line(monkeypatch):
    m, teacher = _method(tau_min=0.1, tau_max=0.5, renoise="student")
    monkeypatch.setattr(student_mod, "random_step", lambda student, generator=None: 1)
    g0 = m.ctx.generator.get_state()
    loss, _ = m.generator_loss(Batch(_noise(), None), 0)
    # replay: the student's own no-grad path from pure noise to step 1
    m.ctx.generator.set_state(g0)
    x1, s1, x0 = unroll_to_step(m.ctx.student, _noise(), None, 1, m.ctx.generator)
    tau = 0.1 + 0.4 * 0.6
    eps = FlowPath.eps_from_x0(x1, s1, x0.detach())
    torch.testing.assert_close(teacher.calls[0][0], FlowPath.add_noise(x0.detach(), eps, tau))
    target = teacher.inner(teacher.calls[0][0], teacher.calls[0][1])
    torch.testing.assert_close(loss, (x0 - target).pow(2).mean())


def test_multi_step_target_levels():
    m, teacher = _method(tau_min=0.3, tau_max=0.3, target_steps=3)
    m.generator_loss(Batch(_noise(), None), 0)
    levels = [float(s[0]) for _, s in teacher.calls]
    assert levels == pytest.approx([0.3, 0.2, 0.1])


# ---------------------------------------------------------------- noise correction

def test_noise_correction_cancels_a_sigma_constant_epsilon_bias():
    """Exact Gaussian data x0 ~ N(mu, s^2): eps* is known in closed form. A network with a
    constant bias b has x0 error sigma' b / delta under the naive formula; the corrected
    estimate at sigma = 1 is exactly the posterior mean at sigma' = 1 - delta."""
    mu, s2, b, delta = torch.tensor([1.5, -0.5]), 0.3, torch.tensor([0.05, -0.02]), 0.05

    def post_mean(x, sig):
        a = 1 - sig
        return mu + a * s2 / (a * a * s2 + sig * sig) * (x - a * mu)

    class BiasedEps(torch.nn.Module):
        def forward(self, x, t, cond=None):
            sig = t[:, None]
            return (x - (1 - sig) * post_mean(x, sig)) / sig + b

    from fewstep.core.denoiser import NetworkDenoiser

    den = NetworkDenoiser(BiasedEps(), prediction="epsilon")
    x = torch.randn(64, 2, generator=torch.Generator().manual_seed(0))
    one = torch.ones(64)
    assert not torch.isfinite(den(x, one)).all()
    naive = den(x, torch.full((64,), 1 - delta))
    corrected = NoiseCorrected(den, delta)(x, one)
    torch.testing.assert_close(corrected, post_mean(x, 1 - delta))
    assert (corrected - mu).abs().max() < 0.1 < (naive - mu).abs().max()
    # rows below sigma = 1 are untouched
    mixed = torch.tensor([1.0] * 32 + [0.5] * 32)
    torch.testing.assert_close(NoiseCorrected(den, delta)(x, mixed)[32:], den(x[32:], mixed[32:]))


@pytest.mark.parametrize("prediction", ["velocity", "x0"])
def test_noise_correction_is_a_no_op_for_velocity_and_x0_models(prediction):
    torch.manual_seed(0)
    den = network_denoiser({"type": "resmlp", "data_shape": [2], "hidden": 16, "depth": 1,
                          "emb": 16}, prediction=prediction)
    for p in den.parameters():
        torch.nn.init.normal_(p, std=0.1)
    nc = noise_corrected(den)
    x = torch.randn(16, 2)
    for sig in (1.0, 0.999, 0.5):
        s = torch.full((16,), sig)
        assert torch.equal(nc(x, s), den(x, s))
    noise = torch.randn(32, 2)
    assert torch.equal(euler_sample(nc, noise, None, teacher_sigmas(4)).sample,
                       euler_sample(den, noise, None, teacher_sigmas(4)).sample)


def test_noise_correction_fixes_the_first_step_of_an_epsilon_teacher(toy_eps_teacher_path):
    den, _ = load_denoiser(toy_eps_teacher_path)
    held, _ = get_problem("checkerboard").split("heldout")
    noise = torch.randn(2000, 2, generator=torch.Generator().manual_seed(5))

    def swd(x):
        return sliced_wasserstein(x, held, generator=torch.Generator().manual_seed(0))

    naive = euler_sample(den, noise, None, teacher_sigmas(2), noise_correction=False).sample
    assert not torch.isfinite(naive).all()                     # 0/0 at sigma = 1
    # the usual work-around: start the schedule just below 1 (amplifies the eps error)
    late = teacher_sigmas(2).clone()
    late[0] = 0.95
    started_late = euler_sample(den, noise, None, late).sample
    fixed = {n: euler_sample(noise_corrected(den, 0.05), noise, None, teacher_sigmas(n)).sample
             for n in (1, 2)}
    result = {"start_at_0.95": swd(started_late), **{f"corrected_{n}": swd(x)
                                                      for n, x in fixed.items()}}
    print(result)
    assert all(torch.isfinite(x).all() for x in fixed.values())
    assert result["corrected_1"] < 0.2 * result["start_at_0.95"], result
    assert result["corrected_2"] < 0.2 * result["start_at_0.95"], result


@pytest.mark.slow
def test_short_run_improves_two_step_student(toy_distill):
    r = toy_distill("imagine_flash", imagine_flash={"tau_min": 0.02, "tau_max": 0.5},
                    train={"lr": 1e-3})
    assert r["trained"] < 0.9 * r["init"], r
