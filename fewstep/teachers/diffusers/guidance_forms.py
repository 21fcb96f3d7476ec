"""Guidance forms: how a pipeline combines its unconditional and conditional outputs.

Each form works on the network outputs ``o_u, o_c`` (after the output sign, in the pipeline's
loop layout, as the pipeline combines them) and our ``w`` (``o_u + w (o_c - o_u)`` is the linear
part). :meth:`GuidanceForm.fit` checks one recorded step -- the two outputs and the
``model_output`` that reached ``scheduler.step`` -- against the form with the ``__call__``
arguments; the form with the smallest residual below the tolerance is the pipeline's.

Built in: ``cfg`` (true CFG, ``w`` fitted: SD ``w = g``, Z-Image ``w = 1 + g``), ``cfg_renorm``
(Lumina2 ``cfg_normalization=True``: rescaled to the conditional output's norm over the last
axis), ``cfg_rescale`` (``guidance_rescale`` of SD / SDXL, std matching). Add one with
``GUIDANCE_FORMS.register(name)(MyForm())`` from a ``plugins:`` module.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from fewstep.utils.registry import Registry


@dataclass
class Fitted:
    """A form fitted to one recorded step: ``w``, the output ``sign`` and the residual (max abs
    error relative to the std of the recorded ``model_output``)."""

    form: str
    w: float
    sign: float
    residual: float
    params: dict[str, Any] = field(default_factory=dict)


class GuidanceForm:
    """How ``o_u, o_c`` combine into the scheduler's ``model_output`` (see module docstring)."""

    name = "?"

    def combine(self, o_u: Tensor, o_c: Tensor, w: float, **params: Any) -> Tensor:
        raise NotImplementedError

    def fit(self, o_u: Tensor, o_c: Tensor, m: Tensor, call: dict[str, Any]) -> Fitted | None:
        """Residual of the recorded ``m`` against this form (``None``: not applicable)."""
        raise NotImplementedError

    def _best(self, o_u: Tensor, o_c: Tensor, m: Tensor, w: float, params: dict) -> Fitted:
        scale = float(m.double().std()) or 1.0
        best = None
        for sign in (1.0, -1.0):
            pred = sign * self.combine(o_u.double(), o_c.double(), w, **params)
            r = float((pred - m.double()).abs().max()) / scale
            if best is None or r < best.residual:
                best = Fitted(self.name, w, sign, r, params)
        assert best is not None
        return best


def _check_name(name: str, form: GuidanceForm) -> None:
    if form.name != name:
        raise ValueError(f"guidance form {form.name!r} registered under another name {name!r}")


#: form name -> :class:`GuidanceForm`
GUIDANCE_FORMS: Registry[GuidanceForm] = Registry("guidance form", "Family.guidance",
                                                  _check_name)


class LinearCFG(GuidanceForm):
    """``o_u + w (o_c - o_u)`` with ``w`` and the sign fitted by least squares."""

    name = "cfg"

    def combine(self, o_u: Tensor, o_c: Tensor, w: float, **params: Any) -> Tensor:
        return o_u + w * (o_c - o_u)

    def fit(self, o_u: Tensor, o_c: Tensor, m: Tensor, call: dict[str, Any]) -> Fitted | None:
        u, c, mm = o_u.double(), o_c.double(), m.double()
        d = c - u
        fits = []
        for sign in (1.0, -1.0):  # least squares w for m = sign (u + w (c - u))
            w = float(((sign * mm - u) * d).sum() / (d * d).sum().clamp_min(1e-30))
            r = float((sign * (u + w * d) - mm).abs().max()) / (float(mm.std()) or 1.0)
            fits.append(Fitted(self.name, w, sign, r, {}))
        return min(fits, key=lambda f: f.residual)


class RenormCFG(GuidanceForm):
    """``p = o_u + w (o_c - o_u)``; ``p * |o_c| / |p|`` with norms over the last axis."""

    name = "cfg_renorm"

    def combine(self, o_u: Tensor, o_c: Tensor, w: float, **params: Any) -> Tensor:
        p = o_u + w * (o_c - o_u)
        return p * (torch.norm(o_c, dim=-1, keepdim=True) / torch.norm(p, dim=-1, keepdim=True))

    def fit(self, o_u: Tensor, o_c: Tensor, m: Tensor, call: dict[str, Any]) -> Fitted | None:
        if not call.get("cfg_normalization") or "guidance_scale" not in call:
            return None
        return self._best(o_u, o_c, m, float(call["guidance_scale"]), {})


class RescaleCFG(GuidanceForm):
    """``p = o_u + w (o_c - o_u)``; ``phi p std(o_c)/std(p) + (1 - phi) p`` (per sample)."""

    name = "cfg_rescale"

    def combine(self, o_u: Tensor, o_c: Tensor, w: float, **params: Any) -> Tensor:
        p = o_u + w * (o_c - o_u)
        dims = list(range(1, p.ndim))
        r = p * (o_c.std(dim=dims, keepdim=True) / p.std(dim=dims, keepdim=True))
        phi = float(params["phi"])
        return phi * r + (1 - phi) * p

    def fit(self, o_u: Tensor, o_c: Tensor, m: Tensor, call: dict[str, Any]) -> Fitted | None:
        phi = float(call.get("guidance_rescale") or 0.0)
        if phi <= 0 or "guidance_scale" not in call:
            return None
        return self._best(o_u, o_c, m, float(call["guidance_scale"]), {"phi": phi})


for _form in (LinearCFG(), RenormCFG(), RescaleCFG()):
    GUIDANCE_FORMS.register(_form.name)(_form)


def fit_guidance(o_u: Tensor, o_c: Tensor, m: Tensor, call: dict[str, Any],
                 only: str | None = None) -> Fitted:
    """The registered form (or ``only``) that best explains ``m``."""
    fits = [f for name, form in GUIDANCE_FORMS.items() if only in (None, name)
            for f in [form.fit(o_u, o_c, m, call)] if f is not None]
    if not fits:
        raise ValueError(f"no guidance form applies (tried {', '.join(GUIDANCE_FORMS.names())})")
    return min(fits, key=lambda f: f.residual)


__all__ = ["GUIDANCE_FORMS", "Fitted", "GuidanceForm", "LinearCFG", "RenormCFG", "RescaleCFG",
           "fit_guidance"]
