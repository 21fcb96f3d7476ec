"""Shared tiny, offline, randomly initialised models for the diffusers-adapter tests."""

from __future__ import annotations

import pytest
import torch
from da_helpers import MAX_SEQ


@pytest.fixture(scope="session")
def tiny_pipe():
    from fewstep.testing import build_tiny_zimage_pipeline

    return build_tiny_zimage_pipeline(seed=0)


@pytest.fixture(scope="session")
def zden(tiny_pipe):
    from fewstep.diffusers_adapters.zimage import ZImageDenoiser

    # frozen like a teacher; tests that train deep-copy it first
    den = ZImageDenoiser.from_pipeline(tiny_pipe, max_sequence_length=MAX_SEQ)
    return den.requires_grad_(False)


@pytest.fixture(scope="session")
def prompt_cond(tiny_pipe):
    from fewstep.conditioning import PromptEmbeds

    with torch.no_grad():
        pos, _ = tiny_pipe.encode_prompt(["a red cat", "a photo of a big blue dog"],
                                         device="cpu", do_classifier_free_guidance=False,
                                         max_sequence_length=MAX_SEQ)
    return PromptEmbeds.from_list(pos)
