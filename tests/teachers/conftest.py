"""Saved tiny, randomly initialised diffusers pipelines (no downloads) for the registry tests."""

from __future__ import annotations

from pathlib import Path

import pytest
from teachers_helpers import FAMILY_SPECS, PROMPTS


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
