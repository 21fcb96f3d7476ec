"""Z-Image Turbo++ on a 2-D toy: real batches, switches, and a short run that beats naive
2-step sampling of the teacher."""

import pytest
import torch

from fewstep.config import validate
from fewstep.distill.config import DistillConfig
from fewstep.distill.trainer import Trainer
from fewstep.evaluation import evaluate_samplers


def _cfg(teacher, tmp_path, **over):
    base = {"method": "turbo_pp", "data": "checkerboard", "teacher": {"path": str(teacher)},
            "cache": {"dir": str(tmp_path / "cache"), "size": 4000, "shard_size": 2000},
            "train": {"iterations": 150, "batch_size": 256, "lr": 3e-4, "ema_decay": 0.9},
            "eval": {"num_samples": 2000}}
    for k, v in over.items():
        base.setdefault(k, {})
        base[k] = {**base[k], **v} if isinstance(v, dict) else v
    return validate(DistillConfig, base)


def _rows_in(a: torch.Tensor, pool: torch.Tensor) -> bool:
    d = torch.cdist(a.flatten(1), pool.flatten(1), compute_mode="donot_use_mm_for_euclid_dist")
    return bool((d.min(dim=1).values < 1e-6).all())


def test_real_batch_is_teacher_samples_unless_switched(toy_teacher_path, tmp_path):
    tr = Trainer(_cfg(toy_teacher_path, tmp_path), tmp_path / "a", progress=False)
    tr.prepare_data()
    batch = tr.next_batch()
    assert _rows_in(batch.real, tr.cache["sample"])
    data, _ = tr.problem.split("train")
    assert not _rows_in(batch.real, data)

    tr = Trainer(_cfg(toy_teacher_path, tmp_path, gan={"real": "dataset"}), tmp_path / "b",
                 progress=False)
    tr.prepare_data()
    batch = tr.next_batch()
    assert _rows_in(batch.real, data)


def test_teacher_traj_target_is_teacher_estimate_from_same_noise(toy_teacher_path, tmp_path):
    from fewstep.samplers import euler_sample
    from fewstep.schedules import teacher_sigmas

    tr = Trainer(_cfg(toy_teacher_path, tmp_path), tmp_path / "a", progress=False)
    tr.prepare_data()
    b = tr.next_batch()
    traj = euler_sample(tr.teacher, b.noise, b.cond, teacher_sigmas(8))
    torch.testing.assert_close(b.teacher_sample, traj.sample, atol=1e-5, rtol=0)
    torch.testing.assert_close(b.teacher_mid, traj.x0s[4], atol=1e-5, rtol=0)  # sigma = 0.5


@pytest.mark.slow
def test_short_run_beats_naive_two_step_teacher(toy_teacher_path, tmp_path):
    torch.manual_seed(0)
    tr = Trainer(_cfg(toy_teacher_path, tmp_path), tmp_path / "run", progress=False)
    student = tr.train()
    metrics, _ = evaluate_samplers(tr.problem, ["teacher_2", "student_2"], tr.teacher,
                                   student=student, num_samples=2000)
    assert metrics["student_2"]["swd"] < 0.9 * metrics["teacher_2"]["swd"], metrics


@pytest.mark.parametrize("end_to_end", [True, False])
def test_generator_loss_reaches_step_one_only_end_to_end(toy_teacher_path, tmp_path,
                                                          end_to_end):
    # no step-1 loss: whatever gradient step 1 gets must come through step 2
    cfg = _cfg(toy_teacher_path, tmp_path, step1={"loss": "none"},
               turbo={"end_to_end": end_to_end})
    tr = Trainer(cfg, tmp_path / "g", progress=False)
    tr.prepare_data()
    loss, _ = tr.method.generator_loss(tr.next_batch(), step=0)
    tr.student.zero_grad(set_to_none=True)
    loss.backward()
    g0 = [p.grad for p in tr.student.step_parameters(0)]
    g1 = [p.grad for p in tr.student.step_parameters(1)]
    assert any(g is not None and g.abs().sum() > 0 for g in g1)
    reached = any(g is not None and g.abs().sum() > 0 for g in g0)
    assert reached == end_to_end
