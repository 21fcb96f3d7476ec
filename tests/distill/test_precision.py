"""Mixed precision helpers: mode resolution, fp16 loss scaling, deferred (batched) logs."""

from __future__ import annotations

import math

import pytest
import torch

from fewstep.distill.engine.optim import grad_norm
from fewstep.distill.engine.precision import (
    DeferredLogs,
    Precision,
    resolve_mode,
    stack_scalars,
)
from fewstep.errors import ConfigError


def test_auto_is_float32_on_cpu_and_modes_validate() -> None:
    cpu = torch.device("cpu")
    assert resolve_mode("auto", cpu) == "no"
    assert resolve_mode("bf16", cpu) == "bf16" and resolve_mode("fp16", cpu) == "fp16"
    with pytest.raises(ConfigError, match=r"train\.mixed_precision"):
        resolve_mode("fp8", cpu)
    assert Precision("bf16", cpu).scaler is None and Precision("no", cpu).dtype is None


def test_fp16_scaler_skips_an_overflowing_step_and_trains_otherwise() -> None:
    torch.manual_seed(0)
    lin = torch.nn.Linear(4, 1)
    opt = torch.optim.SGD(lin.parameters(), lr=0.1)
    prec = Precision("fp16", torch.device("cpu"))
    assert prec.scaler is not None and prec.skips_overflow
    x = torch.randn(8, 4)
    before = lin.weight.detach().clone()
    scale0 = prec.scaler.get_scale()
    # an overflowing loss: the step is skipped and the scale halves
    with prec.autocast():
        loss = lin(x).float().sum() * float("inf")
    prec.backward(loss)
    prec.unscale_(opt)
    assert not math.isfinite(float(grad_norm(list(lin.parameters()))))
    prec.step(opt)
    prec.update()
    assert torch.equal(lin.weight, before) and prec.scaler.get_scale() == scale0 / 2
    # a finite loss trains, and gradients after unscale_ are in true units
    opt.zero_grad()
    with prec.autocast():
        out = lin(x)
        assert out.dtype == torch.bfloat16 or out.dtype == torch.float16
        loss = out.float().pow(2).mean()
    prec.backward(loss)
    prec.unscale_(opt)
    ref = torch.autograd.grad(lin(x).pow(2).mean(), lin.weight)[0]
    torch.testing.assert_close(lin.weight.grad, ref, atol=5e-3, rtol=5e-2)
    prec.step(opt)
    prec.update()
    assert not torch.equal(lin.weight, before)
    sd = prec.state_dict()
    other = Precision("fp16", torch.device("cpu"))
    other.load_state_dict(sd)
    assert other.scaler.get_scale() == prec.scaler.get_scale()


def test_deferred_logs_flush_once_and_name_the_first_bad_step() -> None:
    logs = DeferredLogs(allow_nonfinite=("grad_norm",))
    logs.add(1, {"a": torch.tensor(1.0), "grad_norm": torch.tensor(float("inf"))})
    logs.add(2, {"a": torch.tensor([2.0, 4.0])})  # a vector term is averaged
    logs.add(3, {"a": torch.tensor(float("nan"))})
    logs.add(4, {"a": torch.tensor(float("inf"))})
    assert len(logs) == 4
    rows, bad = logs.flush()
    assert [r["step"] for r in rows] == [1, 2, 3, 4] and rows[1]["a"] == 3.0
    assert rows[0]["grad_norm"] == math.inf  # allowed: an fp16 overflow is a skipped step
    assert bad is not None and bad[:2] == (3, "a") and math.isnan(bad[2])
    assert len(logs) == 0 and logs.flush() == ([], None)


def test_log_terms_on_mixed_devices_stack_on_the_accelerator() -> None:
    """Recipes log device tensors next to host scalars (``step_k``); on a GPU ``torch.stack``
    refuses mixed devices. The "meta" device stands in for an accelerator here."""
    dev = torch.zeros((), device="meta")
    host = torch.tensor(1.0)
    for values in ([dev, host], [host, dev]):
        assert stack_scalars(values).device.type == "meta"
    logs = DeferredLogs()
    logs.add(3, {"g_total": dev, "step_k": host})
    assert len(logs) == 1
    assert stack_scalars([host, torch.tensor([2.0, 4.0])]).tolist() == [1.0, 3.0]


def test_fp16_loss_scale_round_trips_through_a_checkpoint(tmp_path) -> None:
    """The scaler's scale and growth counter are checkpoint tensors (a resumed fp16 run
    continues with them instead of restarting at 65536, which would skip steps the
    uninterrupted run took)."""
    from fewstep.distill.engine.precision import Precision, ScalerState
    from fewstep.distill.engine.state import load_train_state, save_train_state

    dev = torch.device("cpu")
    a = Precision("fp16", dev)
    net = torch.nn.Linear(2, 1)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    for scale in (1e30, 1.0, 1.0):  # one overflowing step (scale backs off), then two good ones
        with a.autocast():
            loss = net(torch.ones(1, 2)).sum() * scale
        a.backward(loss)
        a.unscale_(opt)
        a.step(opt)
        a.update()
        opt.zero_grad()
    want = a.scaler.state_dict()
    assert want["scale"] != 65536.0 and want["_growth_tracker"] == 2
    g = torch.Generator()
    save_train_state(tmp_path / "ck.safetensors", {"s": ScalerState(a)}, {}, {"g": g}, {}, {})
    b = Precision("fp16", dev)
    load_train_state(tmp_path / "ck.safetensors", {"s": ScalerState(b)}, {}, {"g": g})
    got = b.scaler.state_dict()
    assert got["scale"] == want["scale"] and got["_growth_tracker"] == want["_growth_tracker"]
