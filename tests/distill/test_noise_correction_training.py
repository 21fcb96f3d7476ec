"""Training through noise correction (Imagine Flash, docs/methods.md §6): a student of a
zero-terminal-SNR epsilon teacher uses the corrected x0 prediction at sigma = 1 in training,
sampling and export, and every recipe distills such a teacher."""

import pytest
import torch

from fewstep.core.samplers import student_sample
from fewstep.distill.config import DistillConfig
from fewstep.distill.methods import config_class, method_names
from fewstep.distill.trainer import Trainer
from fewstep.networks.registry import network_denoiser
from fewstep.student.student import Student, unroll_to_step
from fewstep.utils.config_files import validate

DELTA = 0.05  # fewstep.core.noise_correction.DEFAULT_DELTA


def _eps_toy() -> torch.nn.Module:
    torch.manual_seed(0)
    den = network_denoiser({"type": "resmlp", "data_shape": [2], "hidden": 32, "depth": 2,
                            "emb": 16}, prediction="epsilon")
    for p in den.parameters():
        p.data.normal_(0.0, 0.1)
    return den


def test_student_step_at_sigma_one_is_the_corrected_prediction():
    teacher = _eps_toy()
    st = Student(teacher, torch.tensor([1.0, 0.5]), "decoupled")
    assert st.noise_correction
    x = torch.randn(16, 2, generator=torch.Generator().manual_seed(1))
    ones = torch.ones(16)
    # the formula of fewstep/core/noise_correction.py written out on the step's raw network
    # (time input "sigma"): x0(x, 1) = x + s' (eps(x, 1) - eps(x, s')) / (1 - s'), s' = 1 - delta
    net, sp = st.steps[0].net, 1.0 - DELTA
    want = x + sp * (net(x, ones, None) - net(x, torch.full((16,), sp), None)) / (1 - sp)
    got = st(0, x, ones)
    torch.testing.assert_close(got, want)
    naive = st(0, x, ones, noise_correction=False)
    assert not torch.isfinite(naive).all()                      # 0/0 without it
    half = torch.full((16,), 0.5)                               # below 1: the plain prediction
    torch.testing.assert_close(st(1, x, half), st.steps[1](x, half))
    # the recipes' path (backward simulation at k = 0) trains through the corrected prediction
    _, _, x0 = unroll_to_step(st, x, None, 0)
    torch.testing.assert_close(x0, want)
    x0.square().mean().backward()
    grads = [p.grad for p in st.steps[0].parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)
    # sampling uses it by default; the `_naive` sampler turns it off
    traj = student_sample(st, x, None)
    torch.testing.assert_close(traj.x0s[0], want.detach())
    assert not torch.isfinite(student_sample(st, x, None, noise_correction=False).x0s[0]).all()


def test_an_exported_student_samples_with_the_corrected_first_step(tmp_path):
    from fewstep.export.native import read_student_folder, write_student_folder

    st = Student(_eps_toy(), torch.tensor([1.0, 0.5]), "decoupled")
    builder = ("fewstep.teachers.training:denoiser_from_config",
               {"config": {"network": {"type": "resmlp", "data_shape": [2], "hidden": 32,
                                       "depth": 2, "emb": 16}, "prediction": "epsilon"}})
    write_student_folder(tmp_path / "st", list(st.steps), st.sigmas, builder=builder)
    loaded = read_student_folder(tmp_path / "st")
    x, ones = torch.randn(8, 2), torch.ones(8)
    with torch.no_grad():
        torch.testing.assert_close(loaded.step_fn()(0, x, ones, None), st(0, x, ones))
        assert not torch.isfinite(loaded.step_fn(noise_correction=False)(0, x, ones, None)).all()


def test_a_velocity_students_step_is_unchanged():
    torch.manual_seed(0)
    teacher = network_denoiser({"type": "resmlp", "data_shape": [2], "hidden": 32, "depth": 2,
                                "emb": 16})
    st = Student(teacher, torch.tensor([1.0, 0.5]), "decoupled")
    x, ones = torch.randn(8, 2), torch.ones(8)
    assert not st.noise_correction
    torch.testing.assert_close(st(0, x, ones), st.steps[0](x, ones))


@pytest.fixture(scope="module")
def ztsnr_eps_unet(tmp_path_factory: pytest.TempPathFactory):
    """A tiny class-conditional epsilon UNet on a zero-terminal-SNR DDPM schedule, as a
    ``teacher.kind: unet_eps`` folder (randomly initialised from config: nothing downloaded)."""
    from diffusers import DDPMScheduler, UNet2DModel

    from fewstep.testing import tiny_unet_config

    folder = tmp_path_factory.mktemp("ztsnr_eps")
    torch.manual_seed(0)
    unet = UNet2DModel(**tiny_unet_config(8, 1, num_class_embeds=11))
    unet.save_pretrained(folder / "unet", safe_serialization=True)
    DDPMScheduler(num_train_timesteps=1000, rescale_betas_zero_snr=True,
                  prediction_type="epsilon").save_pretrained(folder / "scheduler")
    return folder


@pytest.mark.parametrize("method", method_names())
def test_every_recipe_distills_a_zero_terminal_snr_epsilon_teacher(method, ztsnr_eps_unet,
                                                                   tmp_path):
    own = {"gan": {"weight": 0.1, "real": "dataset"}, "sid": {"gan_weight": 0.5}}
    cfg = validate(DistillConfig, {
        "method": method, "data": "digits",
        "teacher": {"kind": "unet_eps", "pretrained": str(ztsnr_eps_unet), "steps": 4},
        "student": {"num_steps": 2},
        **{k: v for k, v in own.items() if k in config_class(method).sections()},
        "cache": {"dir": str(tmp_path / "cache"), "size": 16, "shard_size": 16},
        "train": {"iterations": 2, "batch_size": 8, "aux_ratio": 1}})
    tr = Trainer(cfg, tmp_path / "run", progress=False)
    assert tr.student.noise_correction and float(tr.student.sigmas[0]) == 1.0
    tr.train()
    losses = [v for h in tr.losses.history for v in h.values()]
    assert len(tr.losses.history) == 2 and all(torch.isfinite(torch.as_tensor(v)) for v in losses)
    assert all(torch.isfinite(p).all() for p in tr.student.parameters())
    noise = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = student_sample(tr.ema, noise, torch.arange(4)).sample
    assert torch.isfinite(out).all() and out.abs().max() < 1e3
