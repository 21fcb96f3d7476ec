"""PerStepLoRA: shared frozen base, one adapter per step, gradients through both steps."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from fewstep.core.samplers import sample
from fewstep.student.lora import PerStepLoRA, find_lora_targets
from fewstep.teachers.diffusers.zimage import ZIMAGE_LORA_TARGETS
from fewstep.testing.tiny_pipelines import tiny_latents


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.SiLU(), nn.Linear(16, 16), nn.SiLU(),
                         nn.Linear(16, 6))


def _randomise_lora_b(lora: PerStepLoRA) -> None:
    g = torch.Generator().manual_seed(123)
    with torch.no_grad():
        for k in range(lora.num_steps):
            for n, p in lora.named_step_parameters(k):
                if ".lora_B." in n:
                    p.copy_(torch.randn(p.shape, generator=g) * 0.1)


def _assert_step_grads(lora: PerStepLoRA) -> None:
    for k in range(lora.num_steps):
        named = list(lora.named_step_parameters(k))
        assert any(".lora_A." in n for n, _ in named) and any(".lora_B." in n for n, _ in named)
        for n, p in named:
            assert p.grad is not None, f"step {k}: {n} got no gradient"
            assert p.grad.abs().sum() > 0, f"step {k}: {n} has a zero gradient"


def _assert_disjoint_and_frozen(lora: PerStepLoRA) -> None:
    ids = [{id(p) for p in lora.step_parameters(k)} for k in range(lora.num_steps)]
    for a in range(len(ids)):
        for b in range(a + 1, len(ids)):
            assert not ids[a] & ids[b]
    base = lora.base_parameters()
    assert base and all(not p.requires_grad and p.grad is None for p in base)
    assert not {id(p) for p in base} & set().union(*ids)
    trainable = {id(p) for p in lora.parameters() if p.requires_grad}
    assert trainable == set().union(*ids)


def test_mlp_end_to_end_gradients_reach_both_steps():
    lora = PerStepLoRA(_mlp(), num_steps=2, rank=4)
    _randomise_lora_b(lora)
    x = torch.randn(5, 6)
    out = lora.step_forward(1, lora.step_forward(0, x))
    out.sum().backward()
    _assert_step_grads(lora)
    _assert_disjoint_and_frozen(lora)
    assert lora.active_step is None


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_same_output_as_peft(dtype):
    """Adapters loaded into peft (what diffusers' load_lora_weights does) compute bit for bit
    what PerStepLoRA computes with autograd on (and, merged, within float32 rounding)."""
    from peft import LoraConfig, inject_adapter_in_model, set_peft_model_state_dict

    base = _mlp().to(dtype)
    ref = copy.deepcopy(base)
    lora = PerStepLoRA(base, num_steps=2, rank=4, alpha=8.0)
    _randomise_lora_b(lora)
    for k in range(2):
        ref = inject_adapter_in_model(LoraConfig(**lora.adapter_config()), ref,
                                      adapter_name=f"step{k}")
        set_peft_model_state_dict(ref, {n: t.clone() for n, t in
                                        lora.adapter_state_dict(k).items()},
                                  adapter_name=f"step{k}")
    x = torch.randn(5, 6).to(dtype)
    from peft.tuners.tuners_utils import BaseTunerLayer

    for k in range(2):
        for m in ref.modules():
            if isinstance(m, BaseTunerLayer):
                m.set_adapter(f"step{k}")
        want = ref(x)
        assert torch.equal(lora(k, x), want)  # with autograd
        with torch.no_grad():
            assert torch.equal(lora(k, x), want)
        with torch.inference_mode():
            got = lora(k, x)
        if dtype == torch.float32:  # merged weights
            torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
        else:  # bfloat16 bases are never merged
            assert torch.equal(got, want)


def test_switching_is_constant_time_and_keeps_requires_grad():
    lora = PerStepLoRA(_mlp(), num_steps=3, rank=2)
    lora.set_trainable(1, False)
    with lora.use_step(2):
        assert all(layer.cell.step == 2 for _, layer in lora.lora_layers())
        assert lora.cell is lora.lora_layers()[0][1].cell  # one shared cell, nothing walked
    assert all(layer.cell.step is None for _, layer in lora.lora_layers())
    assert [all(p.requires_grad for p in lora.step_parameters(k)) for k in range(3)] == \
        [True, False, True]
    # merged inference weights are rebuilt when a weight changes in place
    x = torch.randn(4, 6)
    _randomise_lora_b(lora)
    with torch.inference_mode():
        a = lora(0, x)
    with torch.no_grad():
        for p in lora.step_parameters(0):
            p.mul_(2.0)
    with torch.inference_mode():
        b = lora(0, x)
    c = lora(0, x)
    torch.testing.assert_close(b, c.detach(), rtol=1e-6, atol=1e-6)
    assert not torch.allclose(a, b)


def _count_prepares(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    from fewstep.student.lora_layer import StepLoRALinear

    calls = [0]
    orig = StepLoRALinear.prepare_merged

    def counted(self: StepLoRALinear, k: int) -> bool:
        calls[0] += 1
        return orig(self, k)

    monkeypatch.setattr(StepLoRALinear, "prepare_merged", counted)
    return calls


def test_merged_block_switches_without_walking_and_keeps_training_exact(monkeypatch):
    lora = PerStepLoRA(_mlp(), num_steps=2, rank=4)
    _randomise_lora_b(lora)
    x = torch.randn(5, 6)
    with torch.no_grad():
        want = [lora(k, x) for k in range(2)]  # unmerged (peft's computation)
    calls = _count_prepares(monkeypatch)
    with torch.inference_mode():
        lora(0, x)
        assert calls[0] == 3  # checked: one per layer at each switch
        calls[0] = 0
        with lora.merged():
            assert calls[0] == 2 * 3  # every step merged once, on entry
            got = [lora(k, x) for k in (0, 1, 0, 1)]
            assert calls[0] == 2 * 3  # switches inside the block walk nothing
            assert lora.cell.step is None and not lora.cell.merged
    for k, g in zip((0, 1, 0, 1), got, strict=True):
        torch.testing.assert_close(g, want[k], rtol=1e-6, atol=1e-6)
    assert not torch.equal(got[0], got[1])
    # under no_grad (not inference mode) the block merges too; without it no_grad is exact
    with torch.no_grad(), lora.merged():
        torch.testing.assert_close(lora(1, x), want[1], rtol=1e-6, atol=1e-6)
    # a forward that records gradients inside the block is the unmerged one: exact, with grads
    with torch.no_grad(), lora.merged(), torch.enable_grad():
        out = lora.step_forward(1, lora.step_forward(0, x))
    out.sum().backward()
    _assert_step_grads(lora)
    with pytest.raises(RuntimeError, match="no_grad"), lora.merged():
        pass


def test_merged_weights_follow_replaced_tensors_and_copies_start_outside():
    lora = PerStepLoRA(_mlp(), num_steps=2, rank=4)
    _randomise_lora_b(lora)
    x = torch.randn(5, 6)
    with torch.inference_mode():
        a = lora(1, x)
    last = lora.base[4]
    new_bias = nn.Parameter(last.bias.detach() + 1.0, requires_grad=False)
    last.base_layer.bias = new_bias  # a replaced tensor, not an in-place change
    state = {n: t + 0.5 for n, t in lora.adapter_state_dict(0).items()}
    lora.load_adapter_state_dict(0, state)  # replaces the adapter tensors' data
    with torch.no_grad():
        want1, want0 = lora(1, x), lora(0, x)
    with torch.inference_mode():
        torch.testing.assert_close(lora(1, x), want1, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(lora(0, x), want0, rtol=1e-6, atol=1e-6)
        with lora.merged(), lora.use_step(0):
            twin = copy.deepcopy(lora)
            assert lora.cell.merged and twin.cell.step is None and twin.cell.ready is None
            assert twin.lora_layers()[0][1].cell is twin.cell
            torch.testing.assert_close(twin(0, x), want0, rtol=1e-6, atol=1e-6)
    assert not torch.allclose(a, want1)


def test_steps_start_at_base_and_switching_restores():
    base = _mlp()
    ref = copy.deepcopy(base)
    lora = PerStepLoRA(base, num_steps=3, rank=2)
    x = torch.randn(4, 6)
    with torch.no_grad():
        for k in (None, 0, 1, 2):
            torch.testing.assert_close(lora(k, x), ref(x))  # lora_B = 0 at init
        _randomise_lora_b(lora)
        outs = [lora(k, x) for k in range(3)]
        assert not torch.allclose(outs[0], outs[1]) and not torch.allclose(outs[1], outs[2])
        torch.testing.assert_close(lora(None, x), ref(x))
        with lora.use_step(2):
            with lora.use_step(0):
                torch.testing.assert_close(lora.base(x), outs[0])
            assert lora.active_step == 2
            torch.testing.assert_close(lora.base(x), outs[2])
    assert lora.active_step is None
    lora.set_trainable(1, False)
    lora(0, x)  # a switch must keep the user's choice
    assert all(not p.requires_grad for p in lora.step_parameters(1))
    assert all(p.requires_grad for p in lora.step_parameters(0))


def test_target_discovery_and_rank_errors(zden):
    names = find_lora_targets(zden, ZIMAGE_LORA_TARGETS)
    assert any(n.endswith("attention.to_out.0") for n in names)
    assert any(n.endswith("feed_forward.w2") for n in names)
    assert not any("adaLN" in n or "t_embedder" in n for n in names)
    with pytest.raises(ValueError, match="exceeds the dimension of layer"):
        PerStepLoRA(copy.deepcopy(zden), num_steps=2, rank=64, target_modules=ZIMAGE_LORA_TARGETS)
    with pytest.raises(ValueError, match=r"no nn\.Linear layer"):
        find_lora_targets(_mlp(), ["does_not_exist"])
    assert find_lora_targets(_mlp(), ["re:[02]"]) == ["0", "2"]


def _zimage_two_step_grads(zden, cond, checkpointing: bool):
    den = copy.deepcopy(zden)
    torch.manual_seed(0)  # lora_A init draws from the global RNG
    lora = PerStepLoRA(den, num_steps=2, rank=4, target_modules=ZIMAGE_LORA_TARGETS)
    _randomise_lora_b(lora)
    if checkpointing:
        den.set_gradient_checkpointing(True, lora.checkpoint_fn)
    noise = tiny_latents(seed=7)
    traj = sample(lora.step_fn(), noise, cond, [1.0, 0.5], transition_mode="ddim")
    traj.sample.square().mean().backward()  # loss on step 2 only
    _assert_step_grads(lora)
    _assert_disjoint_and_frozen(lora)
    return traj.sample.detach(), {n: p.grad.clone() for k in range(2)
                                  for n, p in lora.named_step_parameters(k)}


def test_zimage_end_to_end_gradients_with_and_without_checkpointing(zden, prompt_cond):
    out0, g0 = _zimage_two_step_grads(zden, prompt_cond, checkpointing=False)
    out1, g1 = _zimage_two_step_grads(zden, prompt_cond, checkpointing=True)
    torch.testing.assert_close(out0, out1)
    assert g0.keys() == g1.keys()
    for n in g0:
        torch.testing.assert_close(g0[n], g1[n], rtol=1e-4, atol=1e-7)
