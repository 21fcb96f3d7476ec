"""``fewstep teacher check``: fewstep's teacher against the pipeline's own ``__call__``.

For each prompt, ``__call__`` runs at its default arguments (plus what the user set: steps,
guidance, size, ``call_kwargs``) under the recorder with ``Generator().manual_seed(seed + i)``.
fewstep reads the pipeline (:func:`~.pipeline_reading.read_pipeline`), captures each prompt's
conditioning and its null branch, and samples with its N-step teacher from the *same initial
latents* (the scheduler sample of step 0), all prompts in one batch, at the guidance the call
used. Reported relative to the std of the pipeline's final latents:

* ``diff``: the teacher as it samples (the scheduler stepped with fewstep's denoiser, the
  scheduler's own ``t`` fed to the network) -- the gate: ``passed`` when it is within
  :data:`TOLERANCE` (float32; :data:`TOLERANCE_16` for 16-bit pipelines);
* ``diff_continuous_t``: the same with ``D(x, s)``'s continuous time input (what the recipes
  train through; differs where the scheduler rounds its timesteps, e.g. Sana's DPM-Solver);
* ``decode``: max abs difference of fewstep's decoder and ``__call__``'s ``output_type="np"``
  (images in [0, 1]), for the first prompt.

``unmatched`` lists what fewstep could not match (each number above its tolerance); ``notes``
what the reading found worth saying (rounded timesteps, learned variance, a stochastic step).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from fewstep.teachers.diffusers.call_spec import bind_call
from fewstep.teachers.diffusers.capture import capture_cond, capture_null
from fewstep.teachers.diffusers.cond_batch import CondBatch
from fewstep.teachers.diffusers.pipeline_reading import read_pipeline
from fewstep.teachers.diffusers.recorder import record
from fewstep.teachers.diffusers.scheduler_sampler import scheduler_sample

#: the gate on ``diff`` for float32 pipelines (of the latent std) and for 16-bit ones
TOLERANCE, TOLERANCE_16 = 1e-4, 2e-2
#: tolerance of ``decode`` (images in [0, 1])
DECODE_TOLERANCE = 1e-4


def _rel(a: Tensor, b: Tensor) -> float:
    return float((a.double() - b.double()).abs().max() / b.double().std())


@torch.no_grad()
def teacher_check(pipe: Any, prompts: tuple[str, ...] = ("a photo of a cat",),
                  steps: int | None = None, guidance: float | None = None,
                  height: int | None = None, width: int | None = None,
                  call_kwargs: dict[str, Any] | None = None, seed: int = 0,
                  decode: bool = True) -> dict[str, Any]:
    """Compare (see module docstring); returns a JSON-able report. ``guidance``: the
    pipeline's ``guidance_scale`` (its own units); ``None`` values: the pipeline's defaults."""
    kw = dict(call_kwargs or {})
    if guidance is not None:
        kw["guidance_scale"] = guidance
    if steps is None:
        steps = int(bind_call(pipe, kw)["num_inference_steps"])
    sized = {"height": height, "width": width} if height and width else {}
    base = {**kw, **sized, "num_inference_steps": steps, "output_type": "latent"}
    reading = read_pipeline(pipe, height, width, steps, kw, seed)
    refs = [record(pipe, {**base, "prompt": p, "generator": torch.Generator().manual_seed(
        seed + i)}, denoiser=reading.spec.denoiser) for i, p in enumerate(prompts)]
    spec = reading.spec
    like = spec.like()
    caps = [capture_cond(pipe, like, base, [p]) for p in prompts]
    cond = CondBatch.cat([c[0] for c in caps])
    null = caps[0][1] or capture_null(pipe, like, base, reading.family.cfg_call, prompts[0])
    den = reading.denoiser(null).eval()
    loop, asp = spec.loop_layout, spec.aspect
    x_t = torch.cat([loop.to_bchw(r.steps[0].sample, asp) for r in refs])
    ref = torch.cat([loop.to_bchw(r.steps[-1].prev, asp) for r in refs])
    w = spec.guidance.w if spec.guidance is not None else 1.0
    stochastic = any(isinstance(v, torch.Generator) for v in spec.step_kwargs.values())

    def run(exact_time: bool) -> Tensor:
        if not stochastic:  # all prompts in one batch
            return scheduler_sample(den, x_t, cond, w, exact_time).sample
        return torch.cat([scheduler_sample(den, x_t[i:i + 1], cond[i], w, exact_time,
                                           refs[i].steps[0].kwargs).sample
                          for i in range(len(refs))])

    dtype = getattr(reading.network, "dtype", torch.float32)
    tol = TOLERANCE if torch.finfo(dtype).bits >= 32 else TOLERANCE_16
    out: dict[str, Any] = {**reading.describe(), "steps": len(refs[0].steps),
                           "guidance_w": w, "guidance_scale": bind_call(pipe, base).get(
                               "guidance_scale"), "latent_std": float(ref.std()),
                           "diff": _rel(run(True), ref), "diff_continuous_t": _rel(run(False), ref),
                           "tolerance": tol}
    if stochastic:
        out["notes"].append("scheduler.step draws noise from the call's generator: compared "
                            "one prompt per batch, the generator's state replayed")
    if decode:
        out["decode"] = _decode_diff(pipe, reading, base, prompts[0], seed, ref[:1])
    unmatched = [f"{k} {out[k]:.3g} > {tol:g}" for k in ("diff", "diff_continuous_t")
                 if out[k] > tol]
    if isinstance(out.get("decode"), float) and out["decode"] > DECODE_TOLERANCE:
        unmatched.append(f"decode {out['decode']:.3g} > {DECODE_TOLERANCE:g}")
    elif isinstance(out.get("decode"), str):
        unmatched.append(f"decode: {out['decode']}")
    out["unmatched"] = unmatched
    out["passed"] = out["diff"] <= tol
    return out


def _decode_diff(pipe: Any, reading: Any, base: dict[str, Any], prompt: str, seed: int,
                 latents: Tensor) -> float | str:
    """fewstep's decoder on the pipeline's final latents vs its own ``output_type="np"``."""
    try:
        img = pipe(**{**base, "output_type": "np", "prompt": prompt,
                      "generator": torch.Generator().manual_seed(seed)})
        img = img.images if hasattr(img, "images") else img[0]
        want = torch.as_tensor(img).permute(0, 3, 1, 2).float()  # (B, H, W, 3) in [0, 1]
        ours = (reading.codec().decode(latents).float() / 2 + 0.5).clamp(0, 1).cpu()
    except Exception as e:  # report what failed, do not hide it
        return f"failed: {type(e).__name__}: {(str(e).splitlines() or [''])[0][:120]}"
    if ours.shape != want.shape:
        return f"shape {tuple(ours.shape)} vs the pipeline's {tuple(want.shape)}"
    return float((ours - want).abs().max())


__all__ = ["DECODE_TOLERANCE", "TOLERANCE", "TOLERANCE_16", "teacher_check"]
