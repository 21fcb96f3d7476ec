"""The ``student`` section of a run config: how many steps, their levels, the parameterisation
(``decoupled`` | ``lora`` | ``shared``), the transition between steps and the LoRA settings."""

from __future__ import annotations

import itertools
from typing import Literal

from pydantic import Field, field_validator, model_validator

from fewstep.utils.config_files import StrictModel


class StudentSpec(StrictModel):
    num_steps: int = Field(2, ge=1, le=64)
    parameterization: Literal["decoupled", "lora", "shared"] = "decoupled"
    transition: Literal["fresh", "ddim"] = "fresh"
    sigmas: list[float] | None = Field(None, description="custom step levels; null: teacher's")
    lora_rank: int = Field(16, ge=1)
    lora_alpha: float | None = Field(None, gt=0.0)
    lora_targets: list[str] | None = None

    @field_validator("sigmas")
    @classmethod
    def _sigmas_ok(cls, v: list[float] | None) -> list[float] | None:
        if v is None:
            return v
        if not v or abs(v[0] - 1.0) > 1e-6:
            raise ValueError("must start at 1.0 (pure noise)")
        if any(not 0.0 < s <= 1.0 for s in v):
            raise ValueError("every sigma must lie in (0, 1]")
        if any(b >= a for a, b in itertools.pairwise(v)):
            raise ValueError("must decrease strictly")
        return v

    @model_validator(mode="after")
    def _sigmas_len(self) -> StudentSpec:
        if self.sigmas is not None and len(self.sigmas) != self.num_steps:
            raise ValueError(f"student.sigmas has {len(self.sigmas)} entries but "
                             f"student.num_steps is {self.num_steps}")
        return self


__all__ = ["StudentSpec"]
