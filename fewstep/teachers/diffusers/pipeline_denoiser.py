"""A pipeline's denoiser as a fewstep :class:`~fewstep.core.denoiser.Denoiser`, driven by its
inferred :class:`~fewstep.teachers.diffusers.call_spec.CallSpec`.

``D(x, s, cond) -> x0_hat`` with ``x (B, C, H, W)`` on the flow path ``x = (1 - s) x0 + s eps``,
``s (B,)``, ``cond`` a :class:`~fewstep.teachers.diffusers.cond_batch.CondBatch`. One call:

1. network input on the model path: ``x_m = x`` (flow) or ``x_m = x / n``,
   ``n = sqrt((1-s)^2 + s^2)`` (vp), in the net layout;
2. time input ``tau = a + b t(s)`` (``t(s)``: the scheduler's continuous timestep; the N-step
   sampler may pass the scheduler's own, possibly integer, ``t`` instead);
3. ``net(*template.fill(latent, tau, cond leaves[, embedded guidance]))``; the first output
   back to ``(B, C, H, W)``, learned variance cut, times the sign: the scheduler's
   ``model_output`` ``m``;
4. ``x0_hat`` from ``m`` by the prediction type with the model path's ``alpha, sigma``
   (``x_m = alpha x0 + sigma eps``): epsilon ``(x - s m) / max(1 - s, min_one_minus_sigma)``
   (finite at ``s = 1``; see :mod:`fewstep.core.noise_correction`); v ``(alpha x_m - sigma m)
   / (alpha^2 + sigma^2)``; sample ``m``; flow ``x - s m``.

CFG (:meth:`PipelineDenoiser.guided`) combines the two outputs with the pipeline's own form
(linear, renorm, rescale) in its loop layout, in one batched call when the pipeline batches them.
The network is registered under the pipeline's component name (``transformer`` / ``unet``), so
LoRA targets and state-dict keys read like the pipeline's.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers.models.modeling_utils import ModelMixin
from torch import Tensor, nn

from fewstep.core.denoiser import Denoiser
from fewstep.teachers.diffusers.call_spec import CallSpec, first_output
from fewstep.teachers.diffusers.call_tree import Template, get, is_row_list
from fewstep.teachers.diffusers.cond_batch import CondBatch
from fewstep.teachers.diffusers.guidance_forms import GUIDANCE_FORMS
from fewstep.teachers.diffusers.scheduler_probe import interp

#: LoRA targets when the network has attention projections named like diffusers' ``Attention``
ATTENTION_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")


def _vec(x: Tensor, s: Tensor | float) -> Tensor:
    s = torch.as_tensor(s, device=x.device, dtype=torch.float32)
    return s.expand(x.shape[0]) if s.ndim == 0 else s.float()


def _bc(v: Tensor, x: Tensor) -> Tensor:
    return v.reshape(-1, *([1] * (x.ndim - 1)))


def _snap(v: float) -> float:
    """A fitted coefficient to 9 significant digits, exactly zero below 1e-6."""
    return 0.0 if abs(v) < 1e-6 else float(f"{v:.9g}")


def _dtype_of(v: Any) -> torch.dtype | None:
    t = v[0] if is_row_list(v) else v
    return t.dtype if torch.is_tensor(t) else None


class PipelineDenoiser(Denoiser):
    """See module docstring. ``feature_blocks`` / ``lora_targets``: the family entry's (``None``:
    inferred from the network)."""

    _ts: Tensor  # flow: the scheduler's (level, timestep) table (buffers, see __init__)
    _tt: Tensor
    _neg_lsnr: Tensor  # VP: -log-SNR of alphas_cumprod

    def __init__(self, net: nn.Module, spec: CallSpec, null: CondBatch | None = None,
                 feature_blocks: str | None = None,
                 lora_targets: tuple[str, ...] | None = None) -> None:
        super().__init__()
        self.component = spec.denoiser
        self.add_module(self.component, net)
        self.spec, self.null = spec, null
        self.embedded_guidance = spec.embedded_guidance
        self.prediction_type, self.path = spec.probe.prediction, spec.probe.path
        self._feature_blocks, self._lora_targets = feature_blocks, lora_targets
        self._a, self._b = _snap(spec.time_ab[0]), _snap(spec.time_ab[1])
        self._form = None if spec.guidance is None else GUIDANCE_FORMS.get(spec.guidance.form)
        self._params = {} if spec.guidance is None else spec.guidance.params
        self._c = spec.latent_chw[0]
        self._cut = spec.out_channels is not None
        self._moved = [(p, a) for p, a in spec.axes.items() if a]
        t_rec = _dtype_of(get(spec.template.args, spec.template.kwargs, spec.time))
        if t_rec is not None and not t_rec.is_floating_point:  # integer timesteps: as floats
            t_rec = torch.float32
        self._time_dtype = t_rec if t_rec is not None and torch.finfo(t_rec).bits >= 32 else None
        self._templates: dict[torch.device, Template] = {}
        self.sigma_max, self.min_one_minus_sigma = 1.0, 1e-3
        if self.path == "flow" and spec.t_affine is not None:  # tau = a' + b' s, fused
            al, be = spec.t_affine
            self._ta, self._tb = self._a + self._b * al, self._b * be
        elif self.path == "flow":  # the scheduler's own (s, t) table
            assert spec.t_table is not None
            self.register_buffer("_ts", spec.t_table[0].clone(), persistent=False)
            self.register_buffer("_tt", spec.t_table[1].clone(), persistent=False)
        else:  # VP: log-SNR table of alphas_cumprod, built once
            ac = torch.as_tensor(spec.scheduler.alphas_cumprod, dtype=torch.float64).clamp(
                1e-20, 1 - 1e-16)  # zero terminal SNR: a finite table, t = T - 1 at s = 1
            self.register_buffer("_neg_lsnr", -(ac.log() - (1 - ac).log()), persistent=False)
            a, s = float(ac[-1]) ** 0.5, (1 - float(ac[-1])) ** 0.5
            self.sigma_max = s / (a + s)  # the flow level of the last trained timestep
            self.min_one_minus_sigma = max(1.0 - self.sigma_max, 1e-3)

    @property
    def network(self) -> ModelMixin:
        """The diffusers network (registered as :attr:`component`)."""
        return getattr(self, self.component)

    def train(self, mode: bool = True) -> PipelineDenoiser:
        """The network always computes as ``__call__`` runs it (eval mode: no dropout, and e.g.
        HiDream's training-mode output layout and MoE routing are off); gradients flow as
        usual. ``self.training`` follows ``mode``."""
        super().train(mode)
        self.network.eval()
        return self

    def scheduler_time(self, s: Tensor) -> Tensor:
        """The scheduler's (continuous) timestep ``t(s)`` at levels ``s (B,)`` (float64)."""
        s64 = s.double()
        if self.path == "flow" and self.spec.t_affine is not None:
            al, be = self.spec.t_affine
            return al + be * s64
        if self.path == "flow":
            return interp(s64, self._ts, self._tt)
        s64 = s64.clamp(1e-12, 1 - 1e-12)
        lq = 2 * (torch.log1p(-s64) - s64.log())  # log-SNR of level s on the VP path
        neg = self._neg_lsnr
        idx = torch.searchsorted(neg, -lq).clamp(1, len(neg) - 1)
        lo, hi = -neg[idx - 1], -neg[idx]
        return (idx - 1).double() + ((lo - lq) / (lo - hi)).clamp(0, 1)

    def tau(self, s: Tensor) -> Tensor:
        """The network's time input ``a + b t(s)`` at levels ``s (B,)`` (float32)."""
        if self.path == "flow" and self.spec.t_affine is not None:  # one fused op
            return s * self._tb + self._ta
        return (self._a + self._b * self.scheduler_time(s)).float()

    # -- the model path ---------------------------------------------------------------------
    def _coeffs(self, s: Tensor, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(alpha, sigma, 1/n)`` broadcast to ``x``: ``x_m = x / n``."""
        s = _bc(s, x)
        if self.path == "flow":
            return 1 - s, s, torch.ones_like(s)
        inv_n = ((1 - s) ** 2 + s**2).rsqrt()
        return (1 - s) * inv_n, s * inv_n, inv_n

    def to_x0(self, x: Tensor, s: Tensor, m: Tensor) -> Tensor:
        """``x0_hat`` from the scheduler's ``model_output`` ``m`` at ``(x, s)``."""
        p = self.prediction_type
        if p == "epsilon":
            sb = _bc(s, x)
            return (x - sb * m) / (1 - sb).clamp_min(self.min_one_minus_sigma)
        if self.path == "flow" and p in ("flow", "flow_prediction"):
            return x - _bc(s, x) * m
        if p == "sample":
            return m
        a, sg, inv_n = self._coeffs(s, x)
        xm = x * inv_n
        if p == "v_prediction":
            return (a * xm - sg * m) / (a * a + sg * sg)
        return (xm - sg * m) / (a + sg)

    def model_output(self, x: Tensor, s: Tensor, x0: Tensor) -> Tensor:
        """Inverse of :meth:`to_x0`: the ``model_output`` implied by ``x0`` (``s < 1``)."""
        a, sg, inv_n = self._coeffs(s, x)
        xm = x * inv_n
        p = self.prediction_type
        if p == "sample":
            return x0
        eps = (xm - a * x0) / sg
        if p == "epsilon":
            return eps
        if p == "v_prediction":
            return a * eps - sg * x0
        return eps - x0

    # -- the network call ---------------------------------------------------------------------
    def _template(self, device: torch.device) -> Template:
        if device not in self._templates:
            self._templates[device] = self.spec.template.to(device)
        return self._templates[device]

    def raw(self, x: Tensor, sigma: Tensor | float, cond: CondBatch,
            timestep: Tensor | float | None = None) -> Tensor:
        """The signed model output ``m (B, C, H, W)`` in the scheduler's convention
        (``timestep``: the scheduler's own ``t`` instead of ``t(sigma)``)."""
        sp, net = self.spec, self.network
        s = _vec(x, sigma)
        dtype = getattr(net, "dtype", x.dtype)
        if timestep is None:
            tau = self.tau(s)
        else:
            t = torch.as_tensor(timestep, dtype=torch.float64, device=x.device)
            tau = (self._a + self._b * t).float().expand(x.shape[0])
        if cond is None:
            raise ValueError("a pipeline teacher needs its conditioning (a CondBatch; the null "
                             "branch: null_cond)")
        if len(cond) == 1 and x.shape[0] > 1:
            cond = cond.repeat(x.shape[0])
        vals: dict[str, Any] = dict(cond.to(x.device, dtype).leaves)
        for p, a in self._moved:  # leaves batched on another axis (HiDream: (layers, B, ...))
            vals[p] = vals[p].movedim(0, a)
        xin = x if self.path == "flow" else x * _bc(((1 - s) ** 2 + s**2).rsqrt(), x)
        vals[sp.latent] = sp.net_layout.to_native(xin if xin.dtype == dtype else xin.to(dtype))
        vals[sp.time] = tau.to(self._time_dtype or dtype)
        if sp.guidance_leaf is not None:
            assert self.embedded_guidance is not None  # CallSpec sets both together
            vals[sp.guidance_leaf] = torch.full((x.shape[0],), float(self.embedded_guidance),
                                                device=x.device, dtype=torch.float32)
        args, kwargs = self._template(x.device).fill(vals)
        out = sp.net_layout.to_bchw(first_output(net(*args, **kwargs)), sp.aspect)
        if self._cut:
            out = out[:, : self._c]
        if sp.sign < 0:
            out = -out
        return out if out.dtype == x.dtype else out.to(x.dtype)

    def forward(self, x: Tensor, sigma: Tensor | float, cond: Any = None,
                timestep: Tensor | float | None = None) -> Tensor:
        s = _vec(x, sigma)
        return self.to_x0(x, s, self.raw(x, s, cond, timestep))

    # -- guidance ------------------------------------------------------------------------------
    def null_cond(self, cond: Any) -> CondBatch:
        if self.null is None:
            raise RuntimeError("no null branch was captured (the pipeline's default call has no "
                               "CFG and switching it on did not give one; see Family.cfg_call)")
        return self.null.repeat(1 if cond is None else len(cond))

    def combine(self, m_u: Tensor, m_c: Tensor, w: float) -> Tensor:
        """The pipeline's guidance form, applied in its loop layout."""
        if self._form is None or self._form.name == "cfg":
            return m_u + w * (m_c - m_u)
        lay, asp = self.spec.loop_layout, self.spec.aspect
        out = self._form.combine(lay.to_native(m_u), lay.to_native(m_c), w, **self._params)
        return lay.to_bchw(out, asp)

    def guided_output(self, x: Tensor, sigma: Tensor | float, cond: CondBatch, w: float,
                      timestep: Tensor | float | None = None) -> Tensor:
        """The guided ``model_output`` (one batched call when the pipeline batches CFG)."""
        s = _vec(x, sigma)
        if w == 1.0:
            return self.raw(x, s, cond, timestep)
        null = self.null_cond(cond)
        b = x.shape[0]
        if len(cond) == 1 and b > 1:
            cond = cond.repeat(b)
        if self.spec.cfg == "batched":
            first, second = (cond, null) if self.spec.cond_first else (null, cond)
            out = self.raw(torch.cat([x, x]), torch.cat([s, s]),
                           CondBatch.cat([first, second.to(x.device)]), timestep)
            m_c, m_u = (out[:b], out[b:]) if self.spec.cond_first else (out[b:], out[:b])
        else:
            m_c = self.raw(x, s, cond, timestep)
            m_u = self.raw(x, s, null, timestep)
        return self.combine(m_u, m_c, w)

    def guided(self, x: Tensor, sigma: Tensor | float, cond: Any, w: float,
               timestep: Tensor | float | None = None) -> Tensor:
        s = _vec(x, sigma)
        return self.to_x0(x, s, self.guided_output(x, s, cond, w, timestep))

    # -- training: LoRA targets, discriminator features, checkpointing ------------------------
    @property
    def lora_targets(self) -> tuple[str, ...] | None:
        """The family entry's, else inferred (:func:`default_lora_targets`)."""
        return self._lora_targets or default_lora_targets(self.network)

    def feature_blocks(self) -> nn.ModuleList:
        """The block list whose outputs are the discriminator features
        (:func:`find_feature_blocks`)."""
        return find_feature_blocks(self.network, self._feature_blocks)

    def features(self, x: Tensor, sigma: Tensor | float, cond: Any = None) -> list[Tensor]:
        """The output of each feature block as tokens ``[(B, N, D), ...]`` (a block returning a
        tuple: its last item; 4-d maps flattened). The full forward runs."""
        blocks = list(self.feature_blocks())
        captured: dict[int, Tensor] = {}

        def hook(i: int) -> Any:
            def fn(_m: nn.Module, _inp: Any, out: Any) -> None:
                captured[i] = out[-1] if isinstance(out, tuple | list) else out
            return fn

        handles = [blk.register_forward_hook(hook(i)) for i, blk in enumerate(blocks)]
        try:
            self.raw(x, sigma, cond)
        finally:
            for h in handles:
                h.remove()
        feats = [captured[i] for i in range(len(blocks))]
        return [f.flatten(2).transpose(1, 2) if f.ndim == 4 else f for f in feats]

    def feature_widths(self) -> list[int]:
        """Width of each :meth:`features` output, from the modules (works on ``meta``)."""
        return [block_width(b) for b in self.feature_blocks()]

    def set_gradient_checkpointing(self, enabled: bool = True, checkpoint_fn: Any = None) -> None:
        if enabled:
            self.network.enable_gradient_checkpointing(checkpoint_fn)
        else:
            self.network.disable_gradient_checkpointing()


def default_lora_targets(net: nn.Module) -> tuple[str, ...] | None:
    """Attention projections when named like diffusers' ``Attention``, else ``None`` (every
    ``nn.Linear``)."""
    names = {n.rsplit(".", 1)[-1] for n, _ in net.named_modules()}
    return ATTENTION_TARGETS if {"to_q", "to_k", "to_v"} <= names else None


def find_feature_blocks(net: nn.Module, name: str | None = None) -> nn.ModuleList:
    """``net.<name>``, else the network's largest ``ModuleList`` child (by parameters)."""
    if name is not None:
        return getattr(net, name)
    lists = [m for m in net.children() if isinstance(m, nn.ModuleList) and len(m)]
    if not lists:
        raise ValueError(f"{type(net).__name__} has no block list for discriminator features "
                         "(Family.feature_blocks)")
    return max(lists, key=lambda m: sum(p.numel() for p in m.parameters()))


def block_width(block: nn.Module) -> int:
    """The output width of a block: its last ``Linear`` / ``Conv2d``'s output size."""
    for m in reversed(list(block.modules())):
        if isinstance(m, nn.Linear):
            return int(m.out_features)
        if isinstance(m, nn.Conv2d):
            return int(m.out_channels)
    raise ValueError(f"cannot tell the output width of {type(block).__name__}")


__all__ = ["ATTENTION_TARGETS", "PipelineDenoiser", "block_width", "default_lora_targets",
           "find_feature_blocks"]
