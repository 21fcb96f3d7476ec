"""Default LoRA targets: a ``teacher.kind: diffusers`` wrapper's family targets, not every
``nn.Linear`` of the network it wraps (the wrapper, not ``wrapper.net``, holds them)."""

from __future__ import annotations

import pytest
import torch

from fewstep.student.student import Student, resolve_lora_targets
from fewstep.teachers.diffusers.meta import MetaPipelineDenoiser
from fewstep.teachers.diffusers.pipeline_reading import read_pipeline
from fewstep.testing.tiny_pipelines import build_tiny_flux_pipeline, build_tiny_sd_pipeline

ATTENTION = ["to_q", "to_k", "to_v", "to_out.0"]


def _wrappers() -> dict[str, torch.nn.Module]:
    """Each tiny pipeline read as the ``diffusers`` teacher kind reads it."""
    return {"flux": read_pipeline(build_tiny_flux_pipeline(0), 16, 16, 2).denoiser(None),
            "sd": read_pipeline(build_tiny_sd_pipeline(0), 16, 16, 2).denoiser(None)}


@pytest.mark.parametrize("family", ["flux", "sd"])
def test_diffusers_wrappers_default_to_their_family_targets(family):
    den = _wrappers()[family]
    assert resolve_lora_targets(den, None) == ATTENTION
    st = Student(den, torch.tensor([1.0, 0.5]), "lora", lora_rank=2)
    linear = [n for n, m in den.named_modules() if isinstance(m, torch.nn.Linear)]
    # the LoRA layers are exactly the attention projections, a strict subset of the Linears
    want = [n for n in linear if n.endswith(tuple("." + t for t in ATTENTION))]
    assert st.lora.targets == want and len(want) < len(linear)
    assert resolve_lora_targets(den, ["proj_out"]) == ["proj_out"]  # explicit targets win


def test_flux_dev_lora_size_on_meta():
    """Full-size Flux.1-dev (shipped offline config), rank 64: 19 double blocks x (q, k, v,
    out) + 38 single blocks x (q, k, v) = 190 layers of 3072 x 3072, r (3072 + 3072) each --
    not the 504 Linear layers (347 M parameters per step) it got before the fix."""
    import json

    import diffusers

    from fewstep.assets import ASSETS

    cfg = json.loads((ASSETS / "configs" / "flux1_dev" / "transformer" / "config.json")
                     .read_text())
    sig = torch.tensor([1.0, 0.5])
    with torch.device("meta"):
        den = MetaPipelineDenoiser(diffusers.FluxTransformer2DModel.from_config(cfg),
                                   "transformer")  # what `fewstep plan` builds
        st = Student(den, sig, "lora", lora_rank=64)
    assert len(st.lora.targets) == 19 * 4 + 38 * 3
    assert sum(p.numel() for p in st.lora.step_parameters(0)) == 190 * 64 * (3072 + 3072)
