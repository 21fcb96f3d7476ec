"""Test fixtures shipped with the package: tiny, randomly initialised, fully offline diffusers
pipelines built from configs (no downloads); simulated disk errors (:mod:`.faults`) and
subprocess drivers for kill tests (:mod:`.runs`). Never used by production code.

The pipeline builders are imported on first use, so ``fewstep.testing.faults`` does not load
diffusers / transformers.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["TINY_MAX_SEQ", "TINY_TRANSFORMER_CONFIG", "build_tiny_flux_pipeline",
           "build_tiny_pixart_pipeline", "build_tiny_sd_pipeline", "build_tiny_tokenizer",
           "build_tiny_zimage_pipeline", "tiny_latents", "tiny_unet_config"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(importlib.import_module("fewstep.testing.tiny_pipelines"), name)
    raise AttributeError(f"module 'fewstep.testing' has no attribute {name!r}")
