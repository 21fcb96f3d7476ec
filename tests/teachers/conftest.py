"""Saved tiny, randomly initialised diffusers pipelines (no downloads) for the registry tests."""

from __future__ import annotations

from pathlib import Path

import pytest

PROMPTS = ["a red cat", "the green tree", "a photo of a big blue dog"]

#: family -> (builder name in fewstep.testing, resolution in pixels, text tokens)
FAMILY_SPECS = {"zimage": ("build_tiny_zimage_pipeline", 32, 64),
                "sd": ("build_tiny_sd_pipeline", 16, 16),
                "pixart": ("build_tiny_pixart_pipeline", 16, 16),
                "flux": ("build_tiny_flux_pipeline", 16, 16)}


@pytest.fixture(scope="session")
def saved_pipelines(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Each tiny pipeline saved with save_pretrained (safetensors), plus a prompt file."""
    import fewstep.testing as testing

    root = tmp_path_factory.mktemp("pipelines")
    out = {}
    for fam, (builder, _, _) in FAMILY_SPECS.items():
        getattr(testing, builder)(seed=0).save_pretrained(root / fam)
        out[fam] = root / fam
    (root / "prompts.txt").write_text("\n".join(PROMPTS) + "\n")
    out["prompts"] = root / "prompts.txt"
    out["cache"] = root / "cache"
    return out
