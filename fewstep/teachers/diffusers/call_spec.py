"""Infer the per-step denoiser call of a pipeline from recordings of its own ``__call__``.

From ``R1`` (prompt A, >= 2 real steps) and stubbed recordings (inputs only, no network pass:
A alone, B alone, A and B together, a 256-step one for the time table):

* loop layout: the :mod:`.layouts` entry whose ``to_bchw`` of ``scheduler.step``'s sample has
  ``vae.config.latent_channels`` channels;
* latent leaf + net layout: the leaf equal to ``k_0 x_0`` (``k_0``: ``scale_model_input``) in
  some registered layout, repeated for batched CFG;
* CFG structure: denoiser calls per step and their batch: ``single``, ``batched`` (one call on
  ``2B`` rows) or ``separate`` (two calls); the conditional branch is the one whose leaves differ
  between the two prompts;
* time leaf: the non-latent leaf that changes from step to step; ``tau = a + b t`` against the
  scheduler timestep ``t`` (fitted on every recorded step); ``t(s)`` for any level: the VP
  timestep of ``alphas_cumprod``, or on the flow path the scheduler's own ``(s, t)`` table of a
  256-step call (affine when it is: ``t = 1000 s``; CogView4's is not);
* conditioning leaves: those whose size on some axis doubles with two prompts (the batch axis,
  not always 0); a padding mask that exists only for padded batches (Qwen-Image); an *embedded
  guidance* leaf equals ``guidance_scale`` and follows it (another stubbed recording);
* output: first item of the return value back to ``(B, C, H, W)``; learned variance (``2C``
  channels) cut to ``C``; sign and guidance form fitted on the ``model_output`` that reached
  ``scheduler.step`` (:mod:`.guidance_forms`).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any

import torch
from diffusers.utils.torch_utils import randn_tensor
from torch import Tensor

from fewstep.teachers.diffusers.call_tree import Template, flatten, get, is_row_list, rows
from fewstep.teachers.diffusers.capture import capture_cond, stub_record
from fewstep.teachers.diffusers.families import Family
from fewstep.teachers.diffusers.guidance_forms import Fitted, fit_guidance
from fewstep.teachers.diffusers.layouts import LAYOUTS, Layout, candidates
from fewstep.teachers.diffusers.recorder import Recording, denoiser_of
from fewstep.teachers.diffusers.scheduler_probe import SchedulerProbe, flow_time_table, probe

#: relative tolerance of "equal" leaves and of the fitted maps, float32 pipelines (16-bit
#: ones: :data:`TOL_16`)
TOL, TOL_16 = 1e-5, 2e-2
#: steps of the stubbed call whose ``(s, t)`` pairs give a flow scheduler's time map
TABLE_STEPS = 256


@dataclass
class CallSpec:
    """The pipeline's per-step denoiser call, as inferred (see module docstring).

    ``template`` rebuilds the call from the latent (``latent``, in ``net_layout``), time
    (``time``: ``tau = a + b t`` with ``time_ab``; ``t(s)``: ``t_affine`` or ``t_table``) and
    conditioning leaves (``cond``, batch axes ``axes``, padding masks ``pad_masks``; an embedded
    guidance leaf ``guidance_leaf`` = ``embedded_guidance``). ``cfg``: ``single`` | ``batched``
    | ``separate`` denoiser calls per step; ``guidance``: the fitted form and ``w``; ``sign``:
    output factor; ``probe``: the scheduler's levels, path and prediction type; ``scheduler``:
    a copy configured as ``__call__`` set it up, with the recorded ``step_kwargs``.
    """

    denoiser: str
    template: Template
    latent: str
    time: str
    cond: list[str]
    axes: dict[str, int]
    pad_masks: dict[str, Any]
    guidance_leaf: str | None
    embedded_guidance: float | None
    net_layout: Layout
    loop_layout: Layout
    aspect: float
    latent_chw: tuple[int, int, int]
    out_channels: int | None
    cfg: str  # single | batched | separate
    cond_first: bool
    guidance: Fitted | None
    sign: float
    time_ab: tuple[float, float]  # tau = a + b t
    t_affine: tuple[float, float] | None  # t = alpha + beta s (flow), else the table
    t_table: tuple[Tensor, Tensor] | None
    time_desc: str
    probe: SchedulerProbe
    scheduler: Any
    step_kwargs: dict[str, Any]
    call: dict[str, Any]
    forwards_per_step: int
    notes: list[str] = field(default_factory=list)
    out_template: Any = None

    def like(self) -> dict[str, Any]:
        """What :func:`.capture.capture_cond` needs."""
        return {"latent": self.latent, "cond": self.cond, "out": self.out_template,
                "forwards": self.forwards_per_step, "cfg": self.cfg, "axes": self.axes,
                "cond_first": self.cond_first, "denoiser": self.denoiser,
                "pad_masks": self.pad_masks}

    def describe(self) -> dict[str, Any]:
        """What was found, JSON-able (``fewstep teacher check`` prints it)."""
        a, b = self.time_ab
        g = self.guidance
        return {"prediction": self.probe.prediction, "model_path": self.probe.path,
                "time_input": f"{self.time} = {a:+.6g} {b:+.6g} * t; {self.time_desc}",
                "levels": [round(float(x), 5) for x in self.probe.levels],
                "guidance": ("none" if g is None else f"{g.form} w={g.w:.6g}")
                + (f"; embedded {self.guidance_leaf}={self.embedded_guidance:g}"
                   if self.guidance_leaf else ""),
                "cfg_calls": f"{self.cfg} ({'cond' if self.cond_first else 'uncond'} first)",
                "sign": self.sign, "latent": f"{self.latent} [{self.net_layout.name}]",
                "loop_layout": self.loop_layout.name, "cond_leaves": self.cond,
                "batch_axes": {p: a for p, a in self.axes.items() if a},
                "pad_masks": list(self.pad_masks), "latent_chw": self.latent_chw}


def bind_call(pipe: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
    """All ``__call__`` arguments: ``kwargs`` over the signature's defaults."""
    ba = inspect.signature(type(pipe).__call__).bind_partial(pipe, **kwargs)
    ba.apply_defaults()
    out = dict(ba.arguments)
    out.pop("self", None)
    out.update(out.pop("kwargs", {}) or {})
    return out


def tolerance(dtype: torch.dtype) -> float:
    """:data:`TOL` for float32 / float64 tensors, :data:`TOL_16` for 16-bit ones."""
    return TOL if torch.finfo(dtype).bits >= 32 else TOL_16


def _close(a: Tensor, b: Tensor, tol: float) -> bool:
    return a.shape == b.shape and float((a.double() - b.double()).abs().max()) <= tol * max(
        float(b.double().abs().max()), 1e-12)


def first_output(out: Any) -> Any:
    """The prediction in a denoiser's return value (first item, or ``.sample``)."""
    if isinstance(out, list | tuple):
        return out[0]
    return getattr(out, "sample", out)


def _differ(u: Any, v: Any) -> bool:
    if torch.is_tensor(u) and torch.is_tensor(v):
        return u.shape != v.shape or not torch.equal(u, v)
    if is_row_list(u) and is_row_list(v):
        return len(u) != len(v) or any(_differ(a, b) for a, b in zip(u, v, strict=True))
    return u != v


def _batch_axis(v1: Any, v2: Any, b: int) -> int | None:
    """Axis whose size is ``b`` in ``v1`` and ``2b`` in ``v2`` (lists: their length)."""
    if isinstance(v1, list | tuple) and isinstance(v2, list | tuple):
        return 0 if (len(v1), len(v2)) == (b, 2 * b) else None
    if torch.is_tensor(v1) and torch.is_tensor(v2) and v1.ndim == v2.ndim:
        return next((a for a in range(v1.ndim) if v1.shape[a] == b and v2.shape[a] == 2 * b),
                    None)
    return None


def _time_table(pipe: Any, like: dict, kw: dict, notes: list[str]) -> tuple:
    """``(t_affine, t_table, description)`` of the flow scheduler's ``t(s)``."""
    rec = stub_record(pipe, like, {**kw, "num_inference_steps": TABLE_STEPS}, ["a"])
    s, t = flow_time_table(rec.scheduler)
    design = torch.stack([torch.ones_like(s), s], 1)
    ab = torch.linalg.lstsq(design, t[:, None]).solution.flatten()
    resid = float((design @ ab - t).abs().max())
    if resid <= 1.0:  # affine up to the scheduler's integer rounding: continuous map
        al, be = float(ab[0]), float(ab[1])
        al = 0.0 if abs(al) <= 1.0 else al
        be = float(round(be)) if abs(be - round(be)) <= 1.0 else be
        if resid > 1e-3:
            notes.append(f"scheduler rounds its timesteps (|t - {be:g} s| <= {resid:.2g}): "
                         f"D(x, s) uses t = {be:g} s, the N-step sampler the scheduler's own t")
        return (al, be), None, f"t = {al:g} + {be:g} s"
    notes.append(f"t(s) is not affine (residual {resid:.3g}): interpolated in the scheduler's "
                 f"{TABLE_STEPS}-step (s, t) table")
    return None, (s, t), f"t = table(s) ({TABLE_STEPS} points)"


def infer(pipe: Any, rec: Recording, call_kwargs: dict[str, Any], family: Family,
          prompts: tuple[str, str] = ("a photo of a cat", "red car")) -> CallSpec:
    """The :class:`CallSpec` of ``pipe`` from ``rec`` (>= 2 steps, prompt ``prompts[0]``) --
    see module docstring. ``call_kwargs``: the ``__call__`` arguments of ``rec`` but prompt."""
    name, _ = denoiser_of(pipe, family.denoiser)
    call = bind_call(pipe, {**call_kwargs, "prompt": prompts[0]})
    notes: list[str] = []
    if len(rec.steps) < 2:
        raise ValueError("need a recording of at least 2 scheduler steps")
    pr = probe(rec.scheduler)
    h, w = call.get("height"), call.get("width")
    aspect = float(h) / float(w) if h and w else 1.0
    # -- loop layout ----------------------------------------------------------------------
    s0 = rec.steps[0].sample
    if torch.is_tensor(s0) and s0.ndim == 5 and s0.shape[2] > 1:
        raise ValueError(f"video latents {tuple(s0.shape)} ({s0.shape[2]} frames): only "
                         "text-to-image pipelines are supported")
    c_vae = dict(getattr(getattr(pipe, "vae", None), "config", {}) or {}).get("latent_channels")
    loops = [lay for lay in candidates(s0, [family.loop_layout] if family.loop_layout else None)
             if c_vae is None or lay.to_bchw(s0, aspect).shape[1] == c_vae]
    if not loops:
        raise ValueError(f"loop latents {tuple(s0.shape)}: no registered layout gives "
                         f"{c_vae} VAE channels (LAYOUTS.register / Family.loop_layout)")
    loop = loops[0]
    x0 = loop.to_bchw(s0, aspect).double()
    big_b = x0.shape[0]
    net_dtype = getattr(denoiser_of(pipe, family.denoiser)[1], "dtype", torch.float32)
    tol = tolerance(net_dtype)
    # -- latent leaf and net layout -------------------------------------------------------
    f0 = rec.forwards_of_step(0)
    leaves0 = flatten(f0[0].args, f0[0].kwargs)
    found = None
    for p, v in leaves0.items():
        for lay in candidates(v, [family.net_layout] if family.net_layout else None):
            try:
                xb = lay.to_bchw(v, aspect).double()
            except (RuntimeError, ValueError):
                continue
            if xb.shape[1:] == x0.shape[1:] and xb.shape[0] % big_b == 0 and all(
                    _close(r, float(pr.k[0]) * x0, tol) for r in xb.split(big_b)):
                found = (p, lay, xb.shape[0])
                break
        if found:
            break
    if found is None:
        raise ValueError("no denoiser input equals the scheduler's latents in a registered "
                         "layout (LAYOUTS.register / Family.net_layout)")
    lat, net_layout, b = found
    m = len(f0)
    cfg = {(1, big_b): "single", (1, 2 * big_b): "batched", (2, big_b): "separate"}.get((m, b))
    if cfg is None:
        raise ValueError(f"{m} denoiser calls of batch {b} per step for {big_b} latents: an "
                         "unsupported guidance structure (e.g. perturbed-attention or "
                         "skip-layer guidance)")
    # -- time leaf: tau = a + b t ---------------------------------------------------------
    steps_fw = [rec.forwards_of_step(k)[0] for k in range(len(rec.steps))]
    leaves1 = flatten(steps_fw[1].args, steps_fw[1].kwargs)
    tps = [p for p, v in leaves0.items() if p != lat and (
        (torch.is_tensor(v) and v.ndim <= 1) or (isinstance(v, float | int) and not isinstance(
            v, bool))) and not torch.equal(torch.as_tensor(v), torch.as_tensor(leaves1[p]))]
    if len(tps) != 1:
        raise ValueError(f"cannot tell the time input: candidates {tps}")
    tp = tps[0]
    tau = torch.tensor([float(torch.as_tensor(get(f.args, f.kwargs, tp)).flatten()[0])
                        for f in steps_fw], dtype=torch.float64)
    ts = torch.tensor([float(torch.as_tensor(s.timestep).flatten()[0]) for s in rec.steps],
                      dtype=torch.float64)
    design = torch.stack([torch.ones_like(ts), ts], 1)
    ab = torch.linalg.lstsq(design, tau[:, None]).solution.flatten()
    if float((design @ ab - tau).abs().max()) > 10 * tol * max(float(tau.abs().max()), 1.0):
        raise ValueError(f"the time input {tp} is not affine in the scheduler's timestep")
    if len(ts) == 2:
        notes.append("time map fitted on 2 steps only")
    # -- conditioning leaves: batch axes, branches, padding masks, embedded guidance ------
    kw = {k: v for k, v in call_kwargs.items() if k != "generator"}
    like = {"latent": lat, "cond": [], "out": f0[0].output, "forwards": m, "cfg": cfg,
            "cond_first": True, "denoiser": name, "axes": {}}
    lv_ab = [flatten(f.args, f.kwargs) for f in
             stub_record(pipe, like, kw, list(prompts)).forwards_of_step(0)]
    axes = {p: a for p in leaves0 if p not in (lat, tp)
            for a in [_batch_axis(leaves0[p], lv_ab[0][p], b)] if a is not None}
    cond = list(axes)
    pad_masks: dict[str, tuple[str, int, torch.dtype] | None] = {
        p: None for p in leaves0 if leaves0[p] is None and torch.is_tensor(lv_ab[0][p])}
    like.update(cond=cond + list(pad_masks), axes=axes)
    cond_first = True
    if cfg != "single":
        def var(lv: dict[str, Any], sl: slice | None) -> bool:
            """Do the two prompts' rows differ in any conditioning leaf of this branch?"""
            for p in cond:
                v = lv[p].movedim(axes[p], 0) if torch.is_tensor(lv[p]) else lv[p]
                r = rows(v, sl) if sl is not None else v
                if r is not None and len(r) >= 2 and _differ(r[0], r[1]):
                    return True
            return False
        first, second = ((var(lv_ab[0], slice(0, 2)), var(lv_ab[0], slice(2, 4)))
                         if cfg == "batched" else (var(lv_ab[0], None), var(lv_ab[1], None)))
        if first == second:
            raise ValueError("cannot tell the conditional branch of the CFG calls")
        cond_first = first
    like["cond_first"] = cond_first
    if pad_masks:  # a mask only when prompts of different lengths share a batch
        ca = capture_cond(pipe, {**like, "pad_masks": {}}, kw, [prompts[0]])[0]
        cb = capture_cond(pipe, {**like, "pad_masks": {}}, kw, [prompts[1]])[0]
        for mp in list(pad_masks):
            mv = lv_ab[0][mp]
            src = next(((p, a) for p in cond if torch.is_tensor(ca.leaves[p])
                        for a in range(1, ca.leaves[p].ndim)
                        if ca.leaves[p].shape[a] != cb.leaves[p].shape[a]
                        and mv.shape[-1] == max(ca.leaves[p].shape[a], cb.leaves[p].shape[a])),
                       None)
            if src is None:
                del pad_masks[mp]
                like["cond"].remove(mp)
            else:
                pad_masks[mp] = (src[0], src[1], mv.dtype)
        cond = like["cond"]
    g_leaf, g_val = None, None
    gs = call.get("guidance_scale")
    same = [p for p in leaves0 if gs is not None and torch.is_tensor(leaves0[p])
            and leaves0[p].is_floating_point() and leaves0[p].numel() > 0
            and bool((leaves0[p] == float(gs)).all())]
    if same and gs is not None:  # ``same`` is empty without a guidance_scale
        rec3 = stub_record(pipe, like, {**kw, "guidance_scale": float(gs) + 1.25}, [prompts[0]])
        lv3 = flatten(rec3.forwards[0].args, rec3.forwards[0].kwargs)
        moved = [p for p in same if bool((lv3[p] == float(gs) + 1.25).all())]
        if moved:
            g_leaf, g_val = moved[0], float(gs)
            cond = [p for p in cond if p != g_leaf]
            axes.pop(g_leaf, None)
    # -- t(s) -------------------------------------------------------------------------------
    if pr.path == "flow":
        t_aff, t_tab, tdesc = _time_table(pipe, like, kw, notes)
    else:
        t_aff, t_tab = None, None
        tdesc = "t = t_vp(s) (alphas_cumprod, log-SNR interpolation)"
    # -- output, sign, guidance -----------------------------------------------------------
    outs = [net_layout.to_bchw(first_output(f.output), aspect) for f in f0]
    c = x0.shape[1]
    out_ch = None
    if outs[0].shape[1] == 2 * c:
        out_ch = c
        notes.append("learned variance: the output's second half is dropped")
    outs = [o[:, :c] for o in outs]
    m0 = rec.steps[0].model_output
    if cfg == "single":
        o, mm = outs[0].double(), loop.to_bchw(m0, aspect).double()
        sign = 1.0 if float((mm * o).sum()) >= 0 else -1.0
        fit, r = None, float((mm - sign * o).abs().max()) / float(mm.std())
    else:
        if cfg == "batched":
            o_c, o_u = ((outs[0][:big_b], outs[0][big_b:]) if cond_first
                        else (outs[0][big_b:], outs[0][:big_b]))
        else:
            o_c, o_u = (outs[0], outs[1]) if cond_first else (outs[1], outs[0])
        fit = fit_guidance(loop.to_native(o_u), loop.to_native(o_c), m0, call, family.guidance)
        sign, r = fit.sign, fit.residual
    if r > 10 * tol:
        raise ValueError(f"the model output reaching scheduler.step is not explained "
                         f"(residual {r:.3g} of its std): register a guidance form "
                         "(GUIDANCE_FORMS)")
    dyn = [lat, tp, *cond] + ([g_leaf] if g_leaf else [])
    template = Template(f0[0].args, f0[0].kwargs, dyn)
    step_kw = {k: v for k, v in rec.steps[0].kwargs.items() if k != "return_dict"}
    chw = (int(x0.shape[1]), int(x0.shape[2]), int(x0.shape[3]))
    return CallSpec(name, template, lat, tp, cond, axes, pad_masks, g_leaf, g_val, net_layout,
                    loop, aspect, chw, out_ch, cfg, cond_first, fit, sign,
                    (float(ab[0]), float(ab[1])), t_aff, t_tab, tdesc, pr, rec.scheduler,
                    step_kw, call, m, notes, f0[0].output)


def noise_draw(rec: Recording, spec: CallSpec, seed: int) -> tuple[str | None, float]:
    """How ``__call__`` drew its initial latents from ``Generator().manual_seed(seed)``:
    ``(input layout, scale)`` such that the scheduler sample of step 0 is
    ``scale * layout.to_bchw(randn(layout's shape))`` in fewstep's layout; ``(None,
    init_noise_sigma)`` when no registered layout explains the recording (``rec``: one prompt,
    recorded with that generator)."""
    x_t = spec.loop_layout.to_bchw(rec.steps[0].sample, spec.aspect)
    order = sorted(LAYOUTS.items(), key=lambda kv: kv[0] != "bchw")  # bchw first: same draw
    for name, lay in order:
        try:
            native = lay.to_native(torch.zeros_like(x_t))
        except (RuntimeError, ValueError):
            continue
        if not torch.is_tensor(native):
            continue
        draw = randn_tensor(tuple(native.shape), generator=torch.Generator().manual_seed(seed),
                            dtype=x_t.dtype)
        z = lay.to_bchw(draw, spec.aspect)
        r = float((x_t * z).sum() / (z * z).sum())
        if float((x_t - r * z).abs().max()) <= TOL * float(x_t.abs().max()):
            return name, r
    return None, float(getattr(spec.scheduler, "init_noise_sigma", 1.0))


__all__ = ["CallSpec", "bind_call", "first_output", "infer", "noise_draw", "tolerance"]
