"""Test fixtures shipped with the package: tiny, randomly initialised, fully offline diffusers
pipelines built from configs (no downloads). Never used by production code."""

from fewstep.testing.tiny_pipelines import (
    TINY_TRANSFORMER_CONFIG,
    build_tiny_flux_pipeline,
    build_tiny_pixart_pipeline,
    build_tiny_sd_pipeline,
    build_tiny_tokenizer,
    build_tiny_zimage_pipeline,
    tiny_unet_config,
)

__all__ = ["TINY_TRANSFORMER_CONFIG", "build_tiny_flux_pipeline", "build_tiny_pixart_pipeline",
           "build_tiny_sd_pipeline", "build_tiny_tokenizer", "build_tiny_zimage_pipeline",
           "tiny_unet_config"]
