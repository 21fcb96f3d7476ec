"""Teachers: training a small flow-matching teacher, and saving / loading denoiser files.

A denoiser file is a safetensors file of kind ``"denoiser"`` whose config holds
``{"network": {...}, "prediction": ..., "time_input": ..., "null_class": ..., "data": ...,
"sampling": {"steps": 8, "shift": 1.0, "cfg_scale": ...}}``.

Training objective (flow matching, docs/methods.md §1): draw ``sigma ~ sigmoid(N(0, 1))`` (or
uniform), ``x_sigma = (1 - sigma) x0 + sigma eps``, and regress the network's native target
(velocity ``eps - x0``, ``eps`` or ``x0``). Labels are dropped to the null class with probability
``cond_dropout`` so that classifier-free guidance works.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import time
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field, field_validator
from torch import Tensor
from tqdm.auto import tqdm

from fewstep.core.denoiser import NetworkDenoiser
from fewstep.core.levels import teacher_sigmas
from fewstep.core.path import FlowPath, logit_normal_sigma
from fewstep.core.samplers import euler_sample
from fewstep.data.problem import builtin_names, get_problem
from fewstep.data.spec import canonical_data, data_label, is_builtin, missing_data_path
from fewstep.errors import CheckpointError, ConfigError
from fewstep.networks.registry import network_denoiser
from fewstep.teachers.base import FILE_IDENTITY_PREFIX
from fewstep.utils.config_files import DeviceName, Seed, StrictModel
from fewstep.utils.ema import ema_update
from fewstep.utils.files import (
    load_state_into,
    load_tensors,
    read_metadata,
    save_tensors,
    tensors_digest,
)
from fewstep.utils.output_dirs import check_output_dir, output_folder
from fewstep.utils.resources import check_memory
from fewstep.utils.viz import save_grid

#: the command name recorded in the manifest of ``<out stem>_samples/``
GRIDS = "teacher train"


class NetworkConfig(StrictModel):
    """A :class:`fewstep.networks.ResMLP` (``hidden``, ``depth``, ``emb``, ``dropout``) or a
    :class:`fewstep.networks.UNet` (``channels``, ``layers_per_block``, ``attention``,
    ``norm_groups``). ``auto``: the ResMLP for 2-D points and images of at most 8x8 pixels, the
    UNet above (:func:`auto_network_type`)."""

    type: Literal["auto", "resmlp", "unet"] = "resmlp"
    hidden: int = Field(256, ge=8)
    depth: int = Field(4, ge=1)
    emb: int = Field(128, ge=8)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    channels: list[int] = Field(default_factory=lambda: [32, 64], min_length=1)
    layers_per_block: int = Field(1, ge=1)
    attention: bool = False
    norm_groups: int = Field(8, ge=1)


#: images up to this many pixels (H * W) get the ResMLP under ``network.type: auto``
MLP_MAX_PIXELS = 64


def auto_network_type(data_shape: tuple[int, ...]) -> str:
    """``resmlp`` for points and images of at most 8x8 pixels, ``unet`` above."""
    if len(data_shape) < 3 or data_shape[-1] * data_shape[-2] <= MLP_MAX_PIXELS:
        return "resmlp"
    return "unet"


def teacher_preset_for(data_shape: tuple[int, ...]) -> str:
    """The shipped teacher preset for a sample shape: ``teacher_8px`` (ResMLP), ``teacher_16px``,
    ``teacher_32px`` or ``teacher_64px`` (UNets), by the larger image side."""
    if len(data_shape) < 3:
        return "teacher_8px"
    side = max(data_shape[-2:])
    for s in (8, 16, 32):
        if side <= s:
            return f"teacher_{s}px"
    return "teacher_64px"


class SamplingDefaults(StrictModel):
    """How the teacher is meant to be sampled."""

    steps: int = Field(8, ge=1)
    shift: float = Field(1.0, gt=0.0)
    cfg_scale: float = 1.0


class TeacherConfig(StrictModel):
    """``fewstep teacher train`` settings."""

    data: str | dict[str, Any] = Field(
        "digits", description="a built-in name, a path or a mapping {path: ..., options} (see "
        "docs/own_images.md); stored in canonical form")
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
    minutes: float | None = Field(None, gt=0.0, description="time budget: training stops after "
                                  "this many minutes (or steps, whichever comes first); the LR "
                                  "schedule follows the larger of the two fractions")
    ema_warmup: bool = Field(False, description="EMA decay min(ema_decay, (1 + s) / (10 + s)) "
                             "at step s (short runs)")
    grids: int = Field(0, ge=0, description="sample grids written during training into "
                       "<out stem>_samples/ (0: none)")

    @field_validator("data")
    @classmethod
    def _data_ok(cls, v: str | dict[str, Any]) -> str | dict[str, Any]:
        if is_builtin(v):
            return v
        try:
            canon = canonical_data(v)
        except ConfigError as e:
            raise ValueError(f"{str(e).removeprefix('data: ')} (built-in: "
                             f"{', '.join(builtin_names())})") from None
        if (missing := missing_data_path(canon)) is not None:
            raise ConfigError(f"data: unknown data set {v!r}; choose from "
                              f"{', '.join(builtin_names())}, or a path to your images (no such "
                              f"file or folder: {missing})")
        return canon


def network_config(cfg: NetworkConfig, data_shape: tuple[int, ...], num_classes: int
                   ) -> dict[str, Any]:
    """The plain-dict network config (``type`` resolved) for :func:`build_network`."""
    kind = auto_network_type(data_shape) if cfg.type == "auto" else cfg.type
    net: dict[str, Any] = {"type": kind, "data_shape": list(data_shape), "num_classes": num_classes}
    if kind == "resmlp":
        net.update(hidden=cfg.hidden, depth=cfg.depth, emb=cfg.emb)
    else:
        if len(data_shape) != 3:
            raise ConfigError(f"network.type: unet needs images (C, H, W), got samples of shape "
                              f"{tuple(data_shape)}")
        net.update(channels=list(cfg.channels), layers_per_block=cfg.layers_per_block,
                   attention=cfg.attention, norm_groups=cfg.norm_groups)
    return net


def denoiser_config(cfg: TeacherConfig) -> dict[str, Any]:
    """The config stored in a teacher's denoiser file."""
    prob = get_problem(cfg.data)
    net = network_config(cfg.network, tuple(prob.data_shape), prob.num_classes)
    return {"network": net, "prediction": cfg.prediction, "time_input": "sigma",
            "null_class": prob.num_classes if prob.num_classes else None, "data": cfg.data,
            "data_info": _data_info(prob),
            "sampling": cfg.sampling.model_dump()}


def _data_info(prob: Any) -> dict[str, Any]:
    """What a teacher file records about user data (class names, value range, sizes)."""
    if not prob.is_user_data:
        return {}
    d = prob.image_data()
    return {"class_names": d.class_names, "value_range": d.value_range,
            "train_images": len(d.x_train), "heldout_images": len(d.x_heldout)}


def denoiser_from_config(config: dict[str, Any]) -> NetworkDenoiser:
    """Build an (uninitialised) denoiser from a denoiser-file config."""
    try:
        return network_denoiser(config["network"], config.get("prediction", "velocity"),
                              config.get("time_input", "sigma"), config.get("null_class"))
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"denoiser config is invalid: {e}") from None


def save_denoiser(path: str | Path, denoiser: NetworkDenoiser, config: dict[str, Any],
                  extra: dict[str, str] | None = None) -> None:
    """Write the denoiser's network weights and its config atomically."""
    save_tensors(path, denoiser.net.state_dict(), "denoiser", config, extra)


def check_network_fits(config: dict[str, Any], device: str | torch.device, field: str,
                       copies: int = 1) -> None:
    """Build the network of a denoiser config on the ``meta`` device (no memory) and refuse,
    one line, when ``copies`` float32 copies of its parameters (1: the weights; training: 5 =
    weights, gradients, two Adam moments, EMA) exceed the memory available."""
    with torch.device("meta"):
        den = denoiser_from_config(config)
    n = sum(p.numel() for p in den.parameters())
    check_memory(n * 4 * copies, device, field, f"{n:,} parameters x {copies} float32 "
                 f"cop{'ies' if copies > 1 else 'y'}")


def check_sampling(config: dict[str, Any], where: str) -> None:
    """The ``sampling`` block of a denoiser file: ``steps >= 1``, ``shift`` finite and > 0,
    ``cfg_scale`` finite (a broken value would make every sample NaN)."""
    samp = config.get("sampling", {})
    if not isinstance(samp, dict):
        raise CheckpointError(f"{where}: sampling config is not a mapping")
    steps, shift, w = samp.get("steps", 8), samp.get("shift", 1.0), samp.get("cfg_scale", 1.0)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise CheckpointError(f"{where}: sampling.steps is {steps!r}; must be an integer >= 1")
    for name, v, positive in (("shift", shift, True), ("cfg_scale", w, False)):
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or \
                (positive and v <= 0):
            raise CheckpointError(f"{where}: sampling.{name} is {v!r}; must be a finite number"
                                  + (" > 0" if positive else ""))


def load_denoiser(path: str | Path, device: str | torch.device = "cpu"
                  ) -> tuple[NetworkDenoiser, dict[str, Any]]:
    """Load a denoiser file; returns ``(denoiser in eval mode, config)``.

    Checked before use: the network's size against the memory available (on the ``meta``
    device, before anything is allocated), every tensor finite, the sampling settings valid
    (:class:`CheckpointError` naming the file)."""
    meta = read_metadata(path)
    if meta.get("fewstep_kind") != "denoiser":
        raise CheckpointError(f"{path} holds {meta.get('fewstep_kind')!r}, expected 'denoiser'")
    try:
        config = json.loads(meta.get("config", "{}") or "{}")
    except ValueError:
        config = None
    if not isinstance(config, dict):
        raise CheckpointError(f"{path} has no denoiser config")
    check_sampling(config, str(path))
    check_network_fits(config, device, str(path))
    tensors, config = load_tensors(path, kind="denoiser")
    bad = next((k for k, t in tensors.items()
                if t.is_floating_point() and not bool(torch.isfinite(t).all())), None)
    if bad is not None:
        raise CheckpointError(f"{path}: tensor {bad} holds NaN / Inf; the weights are broken")
    den = denoiser_from_config(config)
    load_state_into(den.net, tensors, str(path))
    return den.to(device).eval(), config


def denoiser_identity(path: str | Path, denoiser: NetworkDenoiser) -> str:
    """The identity of a denoiser file's weights (never its path): the digest of its tensors --
    the one recorded in the file (verified when it was loaded), else computed from the loaded
    weights (a file written by another tool may lack it)."""
    recorded = read_metadata(path).get("sha256")
    digest = recorded if recorded else tensors_digest(denoiser.net.state_dict())
    return FILE_IDENTITY_PREFIX + digest


def training_target(prediction: str, x0: Tensor, eps: Tensor) -> Tensor:
    """The network's regression target for a given parameterisation."""
    if prediction == "velocity":
        return FlowPath.velocity(x0, eps)
    if prediction == "epsilon":
        return eps
    return x0


def train_teacher(cfg: TeacherConfig, out: str | Path | None = None,
                  progress: bool = True, overwrite: bool = False
                  ) -> tuple[NetworkDenoiser, dict[str, Any]]:
    """Train a flow-matching teacher; write its EMA weights to ``out`` if given.

    Stops after ``cfg.steps`` steps or ``cfg.minutes`` minutes, whichever comes first. With
    ``cfg.grids > 0`` and ``out`` set, writes that many 8-step sample grids (EMA weights, fixed
    noise) into ``<out stem>_samples/`` during training.

    Returns ``(ema denoiser, info)`` with ``info = {"seconds", "steps", "final_loss",
    "params", "network", "steps_per_second"}``.

    The grid folder is an output folder (:mod:`fewstep.utils.output_dirs`): written beside,
    swapped in at the end; one that ``teacher train`` did not write is refused unless
    ``overwrite``. The network's size is checked against the memory available before it is
    built.
    """
    grid_dir = None if (out is None or cfg.grids == 0) else \
        Path(out).parent / f"{Path(out).stem}_samples"
    if grid_dir is not None:
        check_output_dir(grid_dir, GRIDS, overwrite)
    with contextlib.ExitStack() as stack:
        tmp = None if grid_dir is None else \
            stack.enter_context(output_folder(grid_dir, GRIDS, overwrite))
        return _train(cfg, out, progress, tmp)


def _train(cfg: TeacherConfig, out: str | Path | None, progress: bool, grid_dir: Path | None
           ) -> tuple[NetworkDenoiser, dict[str, Any]]:
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    prob = get_problem(cfg.data)  # reads and checks user data before anything else
    x_all, y_all = prob.split("train")
    device = torch.device(cfg.device)
    x_all = x_all.to(device)
    y_all = y_all.to(device) if y_all is not None else None
    dcfg = denoiser_config(cfg)
    check_network_fits(dcfg, device, "network", copies=5)  # weights, grads, Adam x2, EMA
    den = denoiser_from_config(dcfg).to(device)
    ema = copy.deepcopy(den).eval().requires_grad_(False)
    opt = torch.optim.AdamW(den.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    budget = None if cfg.minutes is None else 60.0 * cfg.minutes
    grid_at = {max(1, round(cfg.steps * (k + 1) / cfg.grids)) for k in range(cfg.grids)}
    grid_times = [budget * (k + 1) / cfg.grids for k in range(cfg.grids)] if budget else []

    def lr_factor(step: int, elapsed: float) -> float:  # linear warm-up then cosine to 10 %
        if step < cfg.warmup:
            return (step + 1) / cfg.warmup
        p = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
        if budget is not None:
            p = max(p, elapsed / budget)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(p, 1.0)))

    t0 = time.perf_counter()
    loss_ema = None
    step = 0
    bar = tqdm(total=cfg.steps, desc=f"teacher[{data_label(cfg.data)}]", disable=not progress)
    while step < cfg.steps:
        elapsed = time.perf_counter() - t0
        if budget is not None and elapsed >= budget:
            break
        for g in opt.param_groups:
            g["lr"] = cfg.lr * lr_factor(step, elapsed)
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
            raise ConfigError(f"teacher training diverged at step {step} (loss {loss.item()}); "
                              "lower lr")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(den.parameters(), 1.0)
        opt.step()
        decay = min(cfg.ema_decay, (1 + step) / (10 + step)) if cfg.ema_warmup else cfg.ema_decay
        ema_update(ema, den, decay)
        loss_ema = loss.item() if loss_ema is None else 0.98 * loss_ema + 0.02 * loss.item()
        step += 1
        bar.update(1)
        bar.set_postfix(loss=f"{loss_ema:.4f}")
        elapsed = time.perf_counter() - t0
        if grid_dir is not None and (step in grid_at or (grid_times and elapsed >= grid_times[0])):
            while grid_times and elapsed >= grid_times[0]:
                grid_times.pop(0)
            path = write_sample_grid(ema, prob, grid_dir / f"step_{step:06d}.png", cfg)
            if progress:
                bar.write(f"step {step}: loss {loss_ema:.4f}, {elapsed:.0f} s; wrote {path}")
    bar.close()
    seconds = time.perf_counter() - t0
    if grid_dir is not None:
        write_sample_grid(ema, prob, grid_dir / "final.png", cfg)
    info = {"seconds": round(seconds, 1), "steps": step, "final_loss": loss_ema,
            "params": sum(p.numel() for p in den.parameters()),
            "network": dcfg["network"]["type"],
            "steps_per_second": round(step / max(seconds, 1e-9), 3)}
    if out is not None:
        save_denoiser(out, ema, dcfg, {"train_config": cfg.model_dump_json(),
                                       "train_seconds": f"{seconds:.1f}", "train_steps": str(step)})
    return ema, info


@torch.no_grad()
def write_sample_grid(den: NetworkDenoiser, prob: Any, path: Path, cfg: TeacherConfig,
                      n: int = 40) -> Path:
    """An ``n``-sample grid (fixed noise, the teacher's default steps / shift / CFG) as PNG."""
    g = torch.Generator().manual_seed(cfg.seed + 99)
    device = next(den.parameters()).device
    noise = torch.randn((n, *prob.data_shape), generator=g).to(device)
    cond = None if prob.num_classes == 0 else (torch.arange(n) % prob.num_classes).to(device)
    s = cfg.sampling
    x = euler_sample(den, noise, cond, teacher_sigmas(s.steps, s.shift), s.cfg_scale).sample
    c = prob.num_classes
    save_grid(path, x, nrow=10 if c == 0 else max(c, (10 // c) * c), title=path.stem, scale=0.5)
    return path
