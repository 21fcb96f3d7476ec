"""Teachers: training a small flow-matching teacher, and saving / loading denoiser files.

A denoiser file is a safetensors file of kind ``"denoiser"`` whose config holds
``{"network": {...}, "prediction": ..., "time_input": ..., "null_class": ..., "data": ...,
"sampling": {"steps": 8, "shift": 1.0, "cfg_scale": ...}}``.

Training objective (flow matching, METHODS §1): draw ``sigma ~ sigmoid(N(0, 1))`` (or uniform),
``x_sigma = (1 - sigma) x0 + sigma eps``, and regress the network's native target (velocity
``eps - x0``, ``eps`` or ``x0``). Labels are dropped to the null class with probability
``cond_dropout`` so that classifier-free guidance works.
"""

from __future__ import annotations

import copy
import math
import time
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field
from torch import Tensor
from tqdm.auto import tqdm

from fewstep.config import DeviceName, Seed, StrictModel
from fewstep.data.problem import PROBLEMS, get_problem
from fewstep.denoiser import NetworkDenoiser
from fewstep.errors import CheckpointError, ConfigError
from fewstep.io import load_state_into, load_tensors, save_tensors
from fewstep.networks.registry import build_denoiser
from fewstep.path import FlowPath, logit_normal_sigma


class NetworkConfig(StrictModel):
    """A :class:`fewstep.networks.ResMLP`."""

    type: Literal["resmlp"] = "resmlp"
    hidden: int = Field(256, ge=8)
    depth: int = Field(4, ge=1)
    emb: int = Field(128, ge=8)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)


class SamplingDefaults(StrictModel):
    """How the teacher is meant to be sampled."""

    steps: int = Field(8, ge=1)
    shift: float = Field(1.0, gt=0.0)
    cfg_scale: float = 1.0


class TeacherConfig(StrictModel):
    """``fewstep teacher train`` settings."""

    data: str = "digits"
    network: NetworkConfig = NetworkConfig()
    prediction: Literal["velocity", "epsilon", "x0"] = "velocity"
    steps: int = Field(4000, ge=1)
    batch_size: int = Field(128, ge=1)
    lr: float = Field(1e-3, gt=0.0)
    warmup: int = Field(200, ge=0)
    weight_decay: float = Field(0.0, ge=0.0)
    ema_decay: float = Field(0.999, ge=0.0, lt=1.0)
    cond_dropout: float = Field(0.1, ge=0.0, le=1.0)
    sigma_sampling: Literal["logit_normal", "uniform"] = "logit_normal"
    seed: Seed = 0
    sampling: SamplingDefaults = SamplingDefaults()
    device: DeviceName = "cpu"

    def model_post_init(self, __context: Any) -> None:
        if self.data not in PROBLEMS:
            raise ConfigError(f"data: unknown data set {self.data!r}; choose from {PROBLEMS}")


def denoiser_config(cfg: TeacherConfig) -> dict[str, Any]:
    """The config stored in a teacher's denoiser file."""
    prob = get_problem(cfg.data)
    net = {"type": cfg.network.type, "data_shape": list(prob.data_shape),
           "hidden": cfg.network.hidden, "depth": cfg.network.depth, "emb": cfg.network.emb,
           "num_classes": prob.num_classes}
    return {"network": net, "prediction": cfg.prediction, "time_input": "sigma",
            "null_class": prob.num_classes if prob.num_classes else None, "data": cfg.data,
            "sampling": cfg.sampling.model_dump()}


def denoiser_from_config(config: dict[str, Any]) -> NetworkDenoiser:
    """Build an (uninitialised) denoiser from a denoiser-file config."""
    try:
        return build_denoiser(config["network"], config.get("prediction", "velocity"),
                              config.get("time_input", "sigma"), config.get("null_class"))
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"denoiser config is invalid: {e}") from None


def save_denoiser(path: str | Path, denoiser: NetworkDenoiser, config: dict[str, Any],
                  extra: dict[str, str] | None = None) -> None:
    """Write the denoiser's network weights and its config atomically."""
    save_tensors(path, denoiser.net.state_dict(), "denoiser", config, extra)


def load_denoiser(path: str | Path, device: str | torch.device = "cpu"
                  ) -> tuple[NetworkDenoiser, dict[str, Any]]:
    """Load a denoiser file; returns ``(denoiser in eval mode, config)``."""
    tensors, config = load_tensors(path, kind="denoiser")
    den = denoiser_from_config(config)
    load_state_into(den.net, tensors, str(path))
    return den.to(device).eval(), config


def training_target(prediction: str, x0: Tensor, eps: Tensor) -> Tensor:
    """The network's regression target for a given parameterisation."""
    if prediction == "velocity":
        return FlowPath.velocity(x0, eps)
    if prediction == "epsilon":
        return eps
    return x0


def train_teacher(cfg: TeacherConfig, out: str | Path | None = None,
                  progress: bool = True) -> tuple[NetworkDenoiser, dict[str, Any]]:
    """Train a flow-matching teacher; write its EMA weights to ``out`` if given.

    Returns ``(ema denoiser, info)`` with ``info = {"seconds", "final_loss", "params"}``.
    """
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    prob = get_problem(cfg.data)
    x_all, y_all = prob.split("train")
    device = torch.device(cfg.device)
    x_all = x_all.to(device)
    y_all = y_all.to(device) if y_all is not None else None
    dcfg = denoiser_config(cfg)
    den = denoiser_from_config(dcfg).to(device)
    ema = copy.deepcopy(den).eval().requires_grad_(False)
    opt = torch.optim.AdamW(den.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)

    def lr_at(step: int) -> float:  # linear warm-up then cosine to 10 %
        if step < cfg.warmup:
            return (step + 1) / cfg.warmup
        p = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * p))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    t0 = time.perf_counter()
    loss_ema = None
    bar = tqdm(range(cfg.steps), desc=f"teacher[{cfg.data}]", disable=not progress)
    for _step in bar:
        idx = torch.randint(0, x_all.shape[0], (cfg.batch_size,), generator=gen).to(device)
        x0 = x_all[idx]
        eps = torch.randn(x0.shape, generator=gen).to(device)
        if cfg.sigma_sampling == "logit_normal":
            sigma = logit_normal_sigma(cfg.batch_size, generator=gen).to(device)
        else:
            sigma = torch.rand(cfg.batch_size, generator=gen).to(device)
        labels = None
        if y_all is not None:
            labels = y_all[idx].clone()
            drop = (torch.rand(cfg.batch_size, generator=gen) < cfg.cond_dropout).to(device)
            labels[drop] = prob.num_classes
        xs = FlowPath.add_noise(x0, eps, sigma)
        out_raw = den.net(xs, sigma, labels)
        loss = (out_raw - training_target(cfg.prediction, x0, eps)).pow(2).mean()
        if not torch.isfinite(loss):
            raise ConfigError(f"teacher training diverged at step {_step} (loss {loss.item()}); "
                              "lower lr")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(den.parameters(), 1.0)
        opt.step()
        sched.step()
        with torch.no_grad():
            for pe, p in zip(ema.parameters(), den.parameters(), strict=True):
                pe.lerp_(p, 1.0 - cfg.ema_decay)
        loss_ema = loss.item() if loss_ema is None else 0.98 * loss_ema + 0.02 * loss.item()
        bar.set_postfix(loss=f"{loss_ema:.4f}")
    seconds = time.perf_counter() - t0
    info = {"seconds": round(seconds, 1), "final_loss": loss_ema,
            "params": sum(p.numel() for p in den.parameters())}
    if out is not None:
        save_denoiser(out, ema, dcfg, {"train_config": cfg.model_dump_json(),
                                       "train_seconds": f"{seconds:.1f}"})
    return ema, info
