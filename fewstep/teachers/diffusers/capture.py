"""Conditioning captured from the pipeline's own ``__call__`` (exact prompt encoding).

:func:`capture_cond` runs ``__call__`` for some prompts with the denoiser stubbed (no network
pass: ``net.forward`` returns zeros shaped like a recorded output) and stops after the denoiser
calls of step 0; the conditioning leaves of those calls, split into the conditional and the
null branch as the pipeline arranged them, are the :class:`CondBatch` es. Whatever
``__call__`` does to prompts by default -- system prompts, ``complex_human_instruction``, zeros
for an empty negative prompt (``force_zeros_for_empty_prompt``), pooled embeddings, SDXL time
ids -- is in them by construction.

:func:`null_call_kwargs`: the ``__call__`` kwargs that switch true CFG on when the default call
has none (Flux, Qwen-Image), to record the null branch: ``negative_prompt=""`` and
``true_cfg_scale`` (or ``guidance_scale``) raised to 2 when its default is <= 1; a family
entry's ``cfg_call`` replaces this guess.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch

from fewstep.teachers.diffusers.call_tree import batch_of, flatten, get, is_row_list, rows
from fewstep.teachers.diffusers.cond_batch import CondBatch
from fewstep.teachers.diffusers.recorder import Recording, record


def zeros_like_out(template: Any, n: int) -> Any:
    """A recorded denoiser output with batch ``n`` and zeros (the stub's return value)."""
    if torch.is_tensor(template):
        return torch.zeros((n, *template.shape[1:]), dtype=template.dtype, device=template.device)
    if is_row_list(template):
        return [torch.zeros_like(template[0]) for _ in range(n)]
    if isinstance(template, list | tuple):
        items = [zeros_like_out(t, n) for t in template]
        return tuple(items) if isinstance(template, tuple) else items
    return template


def _to_axis0(v: Any, axis: int) -> Any:
    return v.movedim(axis, 0) if axis and torch.is_tensor(v) else v


def stub_record(pipe: Any, like: dict[str, Any], call_kwargs: dict[str, Any], prompts: list[str],
                forwards: int | None = None) -> Recording:
    """A stubbed recording of ``__call__`` for ``prompts``, stopped after the denoiser calls of
    step 0 (``like``: the call layout, see :meth:`~.call_spec.CallSpec.like`)."""
    lat = like["latent"]

    def stub_output(a: tuple[Any, ...], k: dict[str, Any]) -> Any:
        n = batch_of(get(a, k, lat))
        assert n is not None, "the recorded latent has a batch axis"
        return zeros_like_out(like["out"], n)

    return record(pipe, {**call_kwargs, "prompt": prompts},
                  stop=f"forward:{forwards or like['forwards']}", stub=True,
                  stub_output=stub_output, denoiser=like["denoiser"])


def split_branches(leaves: list[dict[str, Any]], like: dict[str, Any], n: int
                   ) -> tuple[CondBatch, CondBatch | None]:
    """Conditional and null :class:`CondBatch` from the flattened calls of one step."""
    paths, axes, masks = like["cond"], like.get("axes", {}), like.get("pad_masks")

    def pick(lv: dict[str, Any], sl: slice | None) -> CondBatch:
        out = {}
        for p in paths:
            v = _to_axis0(lv[p], axes.get(p, 0))
            out[p] = v if (sl is None or v is None) else rows(v, sl)
        return CondBatch(out, masks)

    if like["cfg"] == "single":
        return pick(leaves[0], None), None
    if like["cfg"] == "batched":
        first, second = slice(0, n), slice(n, 2 * n)
        c, u = (first, second) if like["cond_first"] else (second, first)
        return pick(leaves[0], c), pick(leaves[0], u)
    i_c, i_u = (0, 1) if like["cond_first"] else (1, 0)
    return pick(leaves[i_c], None), pick(leaves[i_u], None)


def capture_cond(pipe: Any, like: dict[str, Any], call_kwargs: dict[str, Any],
                 prompts: list[str]) -> tuple[CondBatch, CondBatch | None]:
    """``(cond, null)`` for ``prompts`` (``null`` is ``None`` when the call has no CFG)."""
    kw = {k: v for k, v in call_kwargs.items() if k != "generator"}
    rec = stub_record(pipe, like, kw, prompts)
    return split_branches([flatten(f.args, f.kwargs) for f in rec.forwards_of_step(0)], like,
                          len(prompts))


def null_call_kwargs(pipe: Any, cfg_call: dict[str, Any] | None) -> dict[str, Any]:
    """``__call__`` kwargs that switch true CFG on (see module docstring)."""
    if cfg_call is not None:
        return dict(cfg_call)
    params = inspect.signature(type(pipe).__call__).parameters
    out: dict[str, Any] = {"negative_prompt": ""} if "negative_prompt" in params else {}
    for name in ("true_cfg_scale", "guidance_scale"):
        if name in params:
            d = params[name].default
            if not isinstance(d, int | float) or d <= 1.0:
                out[name] = 2.0
            break
    return out


def capture_null(pipe: Any, like: dict[str, Any], call_kwargs: dict[str, Any],
                 cfg_call: dict[str, Any] | None, prompt: str) -> CondBatch | None:
    """The null branch of a pipeline whose default call has no CFG: a stubbed call with CFG
    switched on (:func:`null_call_kwargs`); ``None`` if it still makes one denoiser call."""
    kw = {k: v for k, v in call_kwargs.items() if k != "generator"}
    kw.update(null_call_kwargs(pipe, cfg_call))
    rec = stub_record(pipe, like, kw, [prompt], forwards=2)
    fw = rec.forwards_of_step(0)
    lv = [flatten(f.args, f.kwargs) for f in fw]
    b = batch_of(get(fw[0].args, fw[0].kwargs, like["latent"]))
    if len(fw) == 2:
        return split_branches(lv, {**like, "cfg": "separate", "cond_first": True}, 1)[1]
    if b == 2:  # one batched call
        first, second = split_branches(lv, {**like, "cfg": "batched", "cond_first": True}, 1)
        pos = capture_cond(pipe, like, call_kwargs, [prompt])[0]
        return first if differs(first, pos) else second
    return None


def differs(a: CondBatch, b: CondBatch) -> bool:
    """Whether two captures differ in any leaf."""
    def d(u: Any, v: Any) -> bool:
        if torch.is_tensor(u) and torch.is_tensor(v):
            return u.shape != v.shape or not torch.equal(u, v)
        if is_row_list(u) and is_row_list(v):
            return len(u) != len(v) or any(d(x, y) for x, y in zip(u, v, strict=True))
        return bool(u != v)
    return any(d(v, b.leaves[p]) for p, v in a.leaves.items())


__all__ = ["capture_cond", "capture_null", "differs", "null_call_kwargs", "split_branches",
           "stub_record", "zeros_like_out"]
