"""Helpers shared by the diffusers-adapter tests (a uniquely named module, not conftest)."""

from __future__ import annotations

import torch

#: max_sequence_length used for the tiny text encoder in all tests.
MAX_SEQ = 64


def latents(batch: int = 2, size: int = 8, seed: int = 0) -> torch.Tensor:
    """Deterministic Z-Image-shaped latents ``(batch, 16, size, size)``."""
    return torch.randn(batch, 16, size, size, generator=torch.Generator().manual_seed(seed))
