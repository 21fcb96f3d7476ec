"""Latents + prompts: the *problem* of a text-conditioned teacher (any ``teacher.kind``).

:class:`PromptProblem` has the interface of :class:`fewstep.data.problem.Problem` that the
trainer uses: ``data_shape`` is the latent shape ``(C_lat, H / f, W / f)``, ``num_classes`` is
0, :meth:`PromptProblem.sample_cond` returns prompt *ids* ``(n,)`` long (what the teacher-sample
cache stores) and :meth:`PromptProblem.cond_map` turns ids into the teacher's conditioning, a
:class:`~fewstep.core.conditioning.PromptEmbeds` read from a
:class:`~fewstep.teachers.diffusers.prompt_cache.PromptCache` (embeddings computed once; the empty
prompt, for CFG, is the denoiser's ``null_cond``).

There is no image data set: :meth:`PromptProblem.split` raises (``gan.real: dataset`` is
rejected when the config is validated; the "real" samples of a prompts run are the teacher's).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from fewstep.errors import ConfigError
from fewstep.utils.config_files import read_text_file

#: the ``data`` value of a latents + prompts run (any text-conditioned teacher)
PROMPTS_DATA = "prompts"


def read_prompts(path: str | os.PathLike[str], field: str = "teacher.prompts") -> list[str]:
    """The non-blank, stripped lines of a prompt file: a regular file (a FIFO or device is
    refused without being opened) of UTF-8 text (else one line naming the file and the byte
    offset of the first bad byte)."""
    text = read_text_file(path, "prompt file (UTF-8 text, one prompt per line)", field)
    return [s.strip() for s in text.splitlines() if s.strip()]


@dataclass
class PromptProblem:
    """Prompt-conditioned latents.

    Attributes:
        data_shape: one latent, ``(C_lat, H / f, W / f)``.
        prompts: a :class:`~fewstep.teachers.diffusers.prompt_cache.PromptCache` (``len``,
            ``get(ids, device) -> PromptEmbeds``, ``prompts``).
        decode: optional ``latents (B, *data_shape) -> images (B, 3, H, W)`` in ``[-1, 1]``
            (the teacher's VAE), used for sample grids.
    """

    data_shape: tuple[int, ...]
    prompts: Any
    decode: Callable[[Tensor], Tensor] | None = field(default=None, repr=False)
    name: str = PROMPTS_DATA
    num_classes: int = 0

    @property
    def is_toy(self) -> bool:
        return False

    @property
    def num_prompts(self) -> int:
        return len(self.prompts)

    def split(self, split: str) -> tuple[Tensor, Tensor | None]:
        """Not available: a prompts run has no image data set (use the teacher's samples)."""
        raise ConfigError("gan.real: a prompts run (data: prompts) has no image data set; "
                          "use gan.real=teacher")

    def sample_cond(self, n: int, generator: torch.Generator | None = None,
                    device: torch.device | str = "cpu") -> Tensor:
        """``(n,)`` prompt ids: consecutive random permutations of all prompts (balanced)."""
        p = self.num_prompts
        reps = (n + p - 1) // p
        ids = torch.cat([torch.randperm(p, generator=generator) for _ in range(reps)])[:n]
        return ids.to(device)

    def cond_map(self, ids: Tensor | None) -> Any:
        """Prompt ids ``(B,)`` -> padded :class:`PromptEmbeds` (``B`` rows) on ``ids``' device."""
        if ids is None:
            return None
        return self.prompts.get(ids.cpu(), device=ids.device)


__all__ = ["PROMPTS_DATA", "PromptProblem"]
