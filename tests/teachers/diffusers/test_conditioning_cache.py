"""The prompt conditioning cache cannot go stale (issue #21's Flux ``text_encoder_2`` case).

The reference is the pipeline's own encoder: after ``text_encoder_2`` of a Flux pipeline is
changed in place, the cache must not serve the old conditioning -- it opens another key (and
captures again, equal to what ``__call__`` now passes), and a folder holding another key's
manifest in this key's place is refused with one line naming ``cache.dir``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from fewstep.errors import ConfigError
from fewstep.teachers.diffusers.capture import capture_cond
from fewstep.teachers.diffusers.conditioning_cache import ConditioningCache
from fewstep.teachers.diffusers.pipeline_reading import read_pipeline
from fewstep.testing.pipeline_fixtures import fixtures

PROMPTS = ["a red cat", "the green tree"]


def _max_diff(a: dict, b: dict) -> float:
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a
               if torch.is_tensor(a[k]))


def test_changed_text_encoder_2_is_another_key_never_served(tmp_path: Path) -> None:
    fx = fixtures()["flux"]
    pipe = fx.build(0)
    reading = read_pipeline(pipe, fx.resolution, fx.resolution, 2, fx.call_kwargs)

    def open_cache() -> ConditioningCache:
        return ConditioningCache(tmp_path, pipe, reading.spec, reading.call_kwargs, PROMPTS)

    old = open_cache()
    old_row = old.get([0])
    assert old.captured  # captured once
    assert not open_cache().captured  # same encoders, options, layout: served from disk
    with torch.no_grad():
        next(pipe.text_encoder_2.parameters()).add_(0.5)
    new = open_cache()
    assert new.key != old.key and new.dir != old.dir
    assert new.captured  # captured again, not served
    want = capture_cond(pipe, reading.spec.like(), reading.call_kwargs, [PROMPTS[0]])[0]
    assert _max_diff(new.get([0]).leaves, want.leaves) < 1e-6
    assert _max_diff(old_row.leaves, want.leaves) > 1e-3  # what a stale cache would serve


def test_other_key_in_this_place_is_refused(tmp_path: Path) -> None:
    fx = fixtures()["flux"]
    pipe = fx.build(0)
    reading = read_pipeline(pipe, fx.resolution, fx.resolution, 2, fx.call_kwargs)
    c = ConditioningCache(tmp_path, pipe, reading.spec, reading.call_kwargs, PROMPTS)
    manifest = c.dir / "manifest.json"
    info = json.loads(manifest.read_text())
    info["key"] = "0" * 64
    manifest.write_text(json.dumps(info))
    with pytest.raises(ConfigError, match=r"^cache\.dir: .*other text encoders"):
        ConditioningCache(tmp_path, pipe, reading.spec, reading.call_kwargs, PROMPTS)
