"""The ``teacher`` section of a run config (validated up front; kind-specific checks are the
registered adapter's, see :mod:`fewstep.teachers.base`)."""

from __future__ import annotations

import itertools
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from fewstep.data.prompts import read_prompts
from fewstep.errors import ConfigError
from fewstep.utils.config_files import StrictModel, user_path

_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
_BUILDER = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*")


class TeacherSpec(StrictModel):
    """The frozen teacher.

    ``kind`` is a registered adapter (``fewstep.teachers.teacher_kinds()``; the run config
    asks it to check the section and the data, :meth:`TeacherAdapter.check`): ``file`` (default,
    a fewstep denoiser file; ``path: null`` takes the shipped teacher for ``data``),
    ``diffusers`` (any text-to-image diffusers pipeline folder / hub id in ``pretrained``, read
    from the pipeline itself; see docs/adapters.md), ``zimage`` (``diffusers`` restricted to a
    Z-Image pipeline), ``unet_eps`` (a VP ``UNet2DModel`` folder, ``unet/`` + ``scheduler/``, on
    an image data set) and ``custom`` (``builder: "package.module:function"`` returning a
    :class:`fewstep.teachers.CustomTeacher`). Text-conditioned teachers need ``prompts``,
    ``resolution`` and ``data: prompts``.

    ``levels``: the teacher sampler's noise levels: ``uniform`` (``shift(linspace(1, 0, N + 1))``,
    fewstep's Euler sampler), ``pipeline`` (the diffusers pipeline's own N-step sampler: its
    scheduler, at the levels ``__call__`` sets) or an explicit list of ``N + 1`` sigmas from 1
    down to 0. Default: ``pipeline`` for ``diffusers``, else ``uniform``.

    ``cfg_scale`` is fewstep's guidance ``w`` (``d_u + w (d_c - d_u)``) for every kind; a
    diffusers teacher's default is its pipeline's own default guidance in these units
    (``fewstep teacher check`` prints both, e.g. Z-Image ``guidance_scale`` 5 is ``w = 6``).
    """

    kind: str = "file"
    path: str | None = None
    pretrained: str | None = Field(None, description="diffusers folder or hub id")
    builder: str | None = Field(None, description="'package.module:function' (kind custom)")
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32", description="dtype of the frozen teacher (trainable copies stay float32)")
    prompts: str | None = Field(None, description="prompt file, one prompt per line")
    resolution: int | None = Field(None, ge=8, description="image size in pixels (latent "
                                   "teachers); the latent shape follows from the VAE")
    max_sequence_length: int | None = Field(None, ge=1, description="text-encoder tokens "
                                            "(diffusers: null = the pipeline's own default)")
    call_kwargs: dict[str, Any] = Field(
        default_factory=dict, description="more arguments of the diffusers pipeline's "
        "__call__ (e.g. use_resolution_binning: false); the prompt, latents and output are "
        "fewstep's")
    steps: int = Field(8, ge=1, le=10000, description="teacher sampling steps")
    levels: Literal["uniform", "pipeline"] | list[float] | None = Field(
        None, description="uniform | pipeline | [sigma list]; null: the kind's default")
    shift: float | None = Field(None, gt=0.0, description="time shift of the uniform levels; "
                                "null: the teacher's own")
    cfg_scale: float | None = Field(None, description="guidance w; null: the teacher's own "
                                    "(1 = no CFG for diffusers teachers)")

    @field_validator("path")
    @classmethod
    def _path_ok(cls, v: str | None) -> str | None:
        if v is None:
            return v
        if not v.endswith(".safetensors"):
            raise ValueError("must be a .safetensors denoiser file (weights are only read "
                             "from safetensors)")
        return user_path(v)

    @field_validator("prompts")
    @classmethod
    def _prompts_ok(cls, v: str | None) -> str | None:
        """Resolved; a file that exists must be a regular file of UTF-8 text (checked here,
        before any weights are looked up)."""
        if v is None:
            return v
        path = user_path(v)
        if Path(path).exists():
            try:
                read_prompts(path)
            except ConfigError as e:
                raise ValueError(str(e).removeprefix("teacher.prompts: ")) from None
        return path

    @field_validator("builder")
    @classmethod
    def _builder_ok(cls, v: str | None) -> str | None:
        if v is not None and not _BUILDER.fullmatch(v):
            raise ValueError("must be 'package.module:function'")
        return v

    @field_validator("pretrained")
    @classmethod
    def _pretrained_ok(cls, v: str | None) -> str | None:
        """A local folder (resolved) or an ``owner/name`` hub id (kept as is)."""
        if v is None:
            return v
        local = v.startswith(("/", ".", "~")) or Path(v).expanduser().exists()
        if local:
            return user_path(v)
        if not _HUB_ID.fullmatch(v):
            raise ValueError("must be an existing local folder or a hub id 'owner/name'")
        return v

    @field_validator("levels")
    @classmethod
    def _levels_ok(cls, v: object) -> object:
        if not isinstance(v, list):
            return v
        if len(v) < 2 or abs(v[0] - 1.0) > 1e-6 or v[-1] != 0.0:
            raise ValueError("a sigma list must start at 1.0 and end at 0.0")
        if any(b >= a for a, b in itertools.pairwise(v)):
            raise ValueError("a sigma list must decrease strictly")
        return v

    @model_validator(mode="after")
    def _kind_fields(self) -> TeacherSpec:
        if isinstance(self.levels, list) and len(self.levels) != self.steps + 1:
            raise ValueError(f"teacher.levels: {len(self.levels)} levels but teacher.steps "
                             f"is {self.steps} (need steps + 1, ending at 0)")
        return self


__all__ = ["TeacherSpec"]
