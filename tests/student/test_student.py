"""Step decoupling and end-to-end gradients of the K-step student."""

import pytest
import torch

from fewstep.student.student import (
    Student,
    TrainableStateView,
    unroll_to_step,
    weights_fingerprint,
)
from fewstep.testing.toys import toy_denoiser
from fewstep.utils.ema import ema_update

_teacher = toy_denoiser


def _loss_and_grads(student, end_to_end=True):
    noise = torch.randn(16, 2, generator=torch.Generator().manual_seed(1))
    traj = student.generate(noise, None, generator=torch.Generator().manual_seed(2),
                            detach_between_steps=not end_to_end)
    student.zero_grad(set_to_none=True)
    traj.sample.pow(2).sum().backward()
    return [[p.grad for p in student.step_parameters(k)] for k in range(student.num_steps)]


@pytest.mark.parametrize("param", ["decoupled", "lora"])
def test_end_to_end_gradient_reaches_step_one(param):
    st = Student(_teacher(), torch.tensor([1.0, 0.5]), param, lora_rank=4)
    if param == "lora":  # lora_B starts at 0: give it values so lora_A receives gradient too
        for k in range(2):
            for p in st.step_parameters(k):
                torch.nn.init.normal_(p, std=0.05)
    grads = _loss_and_grads(st, end_to_end=True)
    for k in range(2):
        assert grads[k] and all(g is not None and g.abs().sum() > 0 for g in grads[k]), k


@pytest.mark.parametrize("param", ["decoupled", "lora"])
def test_detached_transition_blocks_step_one(param):
    st = Student(_teacher(), torch.tensor([1.0, 0.5]), param, lora_rank=4)
    grads = _loss_and_grads(st, end_to_end=False)
    assert all(g is None or g.abs().sum() == 0 for g in grads[0])
    assert any(g is not None and g.abs().sum() > 0 for g in grads[1])


def test_decoupled_steps_have_disjoint_parameters_and_start_equal_to_teacher():
    t = _teacher()
    st = Student(t, torch.tensor([1.0, 0.5]), "decoupled")
    a, b = ({id(p) for p in st.step_parameters(k)} for k in range(2))
    assert a and b and not a & b
    x, s = torch.randn(4, 2), torch.full((4,), 0.7)
    torch.testing.assert_close(st(0, x, s), t(x, s))
    torch.testing.assert_close(st(1, x, s), t(x, s))


def test_lora_steps_disjoint_trainable_and_base_frozen():
    st = Student(_teacher(), torch.tensor([1.0, 0.5]), "lora", lora_rank=4)
    a, b = ({id(p) for p in st.step_parameters(k)} for k in range(2))
    assert a and b and not a & b
    trainable = {id(p) for p in st.parameters() if p.requires_grad}
    assert trainable == a | b  # everything else (the shared base) is frozen


def test_shared_student_uses_one_parameter_set():
    st = Student(_teacher(), torch.tensor([1.0, 0.5]), "shared")
    assert [id(p) for p in st.step_parameters(0)] == [id(p) for p in st.step_parameters(1)]


def test_unroll_to_step_only_last_step_has_graph():
    st = Student(_teacher(), torch.tensor([1.0, 0.6, 0.3]), "decoupled")
    x, sigma, x0 = unroll_to_step(st, torch.randn(8, 2), None, 2,
                                  torch.Generator().manual_seed(0))
    assert not x.requires_grad and x0.requires_grad
    assert torch.allclose(sigma, torch.full((8,), 0.3))
    x0.sum().backward()
    assert all(p.grad is None for p in st.step_parameters(0))
    assert all(p.grad is None for p in st.step_parameters(1))
    assert any(p.grad is not None for p in st.step_parameters(2))


# -- one frozen base: trainable state, base fingerprint, EMA over trainables -----------------
def _storages(*modules):
    """``{storage data_ptr: nbytes}`` of every parameter and buffer of ``modules``."""
    out = {}
    for m in modules:
        for t in (*m.parameters(), *m.buffers()):
            out[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
    return out


def test_lora_student_teacher_and_ema_hold_one_base():
    t = _teacher()
    st = Student(t, torch.tensor([1.0, 0.5]), "lora", lora_rank=4)
    ema = st.ema_copy()
    mine = dict(st.lora.base.named_parameters())
    theirs = dict(ema.lora.base.named_parameters())
    copies = []
    for name, p in t.named_parameters():  # where is each teacher weight held?
        key = next(k for k in mine if k.replace(".base_layer.", ".") == name)
        copies.append(len({x.untyped_storage().data_ptr() for x in (p, mine[key], theirs[key])}))
    assert max(copies) == 1  # base_copies == 1: student and EMA run on the teacher's tensors
    adapters = sum(p.numel() * p.element_size() for _, p in st.named_trainable_parameters())
    teacher_bytes = sum(_storages(t).values())
    assert sum(_storages(t, st.lora, ema.lora).values()) == teacher_bytes + 2 * adapters
    # the teacher module itself is untouched: no LoRA layers, same outputs as before
    assert not any(".lora_" in n for n, _ in t.named_parameters())
    x, s = torch.randn(4, 2), torch.full((4,), 0.7)
    for p in st.step_parameters(0):
        torch.nn.init.normal_(p, std=0.1)
    assert not torch.allclose(st(0, x, s), t(x, s))
    with torch.no_grad():
        torch.testing.assert_close(st.lora(None, x, s), t(x, s))


@pytest.mark.parametrize("param", ["decoupled", "lora", "shared"])
def test_trainable_state_roundtrip_and_fingerprint(param):
    t = _teacher()
    st = Student(t, torch.tensor([1.0, 0.5]), param, lora_rank=4)
    with torch.no_grad():
        for _, p in st.named_trainable_parameters():
            p.add_(torch.randn(p.shape) * 0.1)
    state = st.trainable_state_dict()
    if param == "lora":
        assert state and all(".lora_" in n for n in state)
        assert st.base_fingerprint() == weights_fingerprint(t.state_dict())
    else:
        assert set(state) == set(st.state_dict()) and st.base_fingerprint() is None
    other = Student(t, torch.tensor([1.0, 0.5]), param, lora_rank=4)
    other.load_trainable_state_dict(state)
    x, s = torch.randn(4, 2), torch.full((4,), 0.7)
    for k in range(2):
        torch.testing.assert_close(other(k, x, s), st(k, x, s), rtol=0, atol=0)
    other.load_trainable_state_dict(st.state_dict())  # a full state dict is accepted too
    with pytest.raises(KeyError, match="missing"):
        other.load_trainable_state_dict({})


def test_full_state_with_another_base_is_rejected():
    st = Student(_teacher(), torch.tensor([1.0, 0.5]), "lora", lora_rank=4)
    t2 = _teacher()
    with torch.no_grad():
        next(t2.parameters()).add_(1.0)
    other = Student(t2, torch.tensor([1.0, 0.5]), "lora", lora_rank=4)
    assert other.base_fingerprint() != st.base_fingerprint()
    with pytest.raises(ValueError, match="base weights differ"):
        other.load_trainable_state_dict(st.state_dict())


def test_student_ema_averages_trainables_only():
    st = Student(_teacher(), torch.tensor([1.0, 0.5]), "lora", lora_rank=4)
    ema = st.ema_copy()
    base = {n: p.clone() for n, p in ema.lora.base.named_parameters() if "lora_" not in n}
    before = {n: p.clone() for n, p in ema.named_trainable_parameters()}
    with torch.no_grad():
        for _, p in st.named_trainable_parameters():
            p.add_(1.0)
    ema_update(ema, st, 0.75)
    live = dict(st.named_trainable_parameters())
    for n, p in ema.named_trainable_parameters():
        torch.testing.assert_close(p, 0.75 * before[n] + 0.25 * live[n])
        assert not p.requires_grad
    for n, p in ema.lora.base.named_parameters():  # the frozen base is not averaged
        assert n not in base or torch.equal(p, base[n])
    assert set(ema.trainable_state_dict()) == set(st.trainable_state_dict())


def test_trainable_state_view_for_checkpoints():
    st = Student(_teacher(), torch.tensor([1.0, 0.5]), "lora", lora_rank=4)
    view = TrainableStateView(st)
    saved = {n: t.clone() + 1.0 for n, t in view.state_dict().items()}
    view.load_state_dict(saved)
    assert all(torch.equal(st.trainable_state_dict()[n], t) for n, t in saved.items())
