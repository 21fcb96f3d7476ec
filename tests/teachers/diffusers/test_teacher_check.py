"""fewstep's pipeline teacher against each pipeline's own ``__call__`` at its defaults.

Ground truth is the pipeline itself: ``teacher_check`` records ``__call__`` (default guidance,
default negative / null branch, the scheduler's own N-step levels) and samples the same initial
latents through fewstep's reading of it. Every tiny fixture family (enumerated from
:func:`fewstep.testing.pipeline_fixtures.fixtures`, not listed here) must match within 1e-4 of
the latent std in float32, and decode like ``output_type="np"``.
"""

from __future__ import annotations

import pytest
import torch

from fewstep.teachers.diffusers.teacher_check import TOLERANCE, teacher_check
from fewstep.testing.pipeline_fixtures import fixtures

FIXTURES = fixtures()


@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_teacher_sampling_matches_the_pipelines_own_call(name: str) -> None:
    torch.manual_seed(0)
    fx = FIXTURES[name]
    pipe = fx.build(0)
    r = teacher_check(pipe, ("a photo of a cat", "red car"), steps=3, height=fx.resolution,
                      width=fx.resolution, call_kwargs=fx.call_kwargs)
    assert r["diff"] <= TOLERANCE, (name, r["diff"], r["unmatched"])
    assert r["passed"]
    assert r["latent_std"] > 0  # the reference is not a constant
    assert r["decode"] == pytest.approx(0.0, abs=1e-4), (name, r["decode"])
    assert r["prediction"] in ("flow", "flow_prediction", "epsilon", "v_prediction", "sample")


def test_check_fails_when_the_teacher_reads_another_guidance(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The gate is not vacuous: a teacher sampling at 1.5x the call's guidance fails it."""
    import fewstep.teachers.diffusers.teacher_check as tc

    fx = FIXTURES["sd3"]
    pipe = fx.build(0)
    kw = dict(prompts=("a photo of a cat",), steps=2, height=fx.resolution, width=fx.resolution,
              call_kwargs=fx.call_kwargs, decode=False)
    good = teacher_check(pipe, **kw)
    real = tc.scheduler_sample
    monkeypatch.setattr(tc, "scheduler_sample",
                        lambda den, x, cond, w, *a, **k: real(den, x, cond, 1.5 * w, *a, **k))
    bad = teacher_check(pipe, **kw)
    assert good["passed"] and not bad["passed"]
    assert bad["diff"] > 100 * TOLERANCE
