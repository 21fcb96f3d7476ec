"""Helpers for the registry tests (a uniquely named module, importable as a builder path)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from fewstep.distill.config import DistillConfig, drop_foreign_sections
from fewstep.teachers import CustomTeacher
from fewstep.utils.config_files import validate

PROMPTS = ["a red cat", "the green tree", "a photo of a big blue dog"]

#: family -> (builder name in fewstep.testing, resolution in pixels, text tokens)
FAMILY_SPECS = {"zimage": ("build_tiny_zimage_pipeline", 32, 64),
                "sd": ("build_tiny_sd_pipeline", 16, None),  # no max_sequence_length
                "pixart": ("build_tiny_pixart_pipeline", 16, 16),
                "flux": ("build_tiny_flux_pipeline", 16, 16)}


def diffusers_cfg(stacks: dict[str, Path], family: str, resolution: int, max_seq: int | None,
                  **sections: Any) -> DistillConfig:
    teacher = {"kind": "diffusers", "pretrained": str(stacks[family]),
               "prompts": str(stacks["prompts"]), "resolution": resolution,
               "steps": 4, **sections.pop("teacher", {})}
    if max_seq is not None:
        teacher.setdefault("max_sequence_length", max_seq)
    if family == "pixart":  # its aspect-ratio binning snaps 16 px to a >= 256 px bin
        teacher.setdefault("call_kwargs", {"use_resolution_binning": False})
    data = {"data": "prompts", "teacher": teacher,
            "cache": {"dir": str(stacks["cache"]), "size": 4, "shard_size": 4, "batch_size": 4},
            **sections}
    return validate(DistillConfig, drop_foreign_sections(data))


# ------------------------------------------------ a custom network teacher: the user's code
class TinyNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(11, 64)
        self.body = nn.Sequential(nn.Linear(65, 128), nn.SiLU(), nn.Linear(128, 64))

    def forward(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        h = torch.cat([x.flatten(1) + self.emb(labels), t[:, None]], dim=1)
        return self.body(h).view_as(x)


def build() -> CustomTeacher:
    torch.manual_seed(0)
    return CustomTeacher(TinyNet(), data_shape=(1, 8, 8), prediction="velocity",
                         time_input="sigma", num_classes=10, steps=4)
# ------------------------------------------------ end of the user's code (17 lines)


def build_wrong_type() -> nn.Module:
    return TinyNet()
