"""Every tiny offline text-to-image pipeline fixture, by family (``FIXTURES``).

20 builders over 18 families (:mod:`.tiny_flow_pipelines`, :mod:`.tiny_llm_flow_pipelines`,
:mod:`.tiny_vp_pipelines`): random weights drawn from a seed, tokenizers built in code
(:mod:`.tiny_text_encoders`), VAEs of every class the families ship (:mod:`.tiny_autoencoders`),
and the schedulers of the real checkpoints. Each entry gives the resolution its pipeline runs
at and the ``__call__`` arguments it needs beyond the defaults (``teacher.call_kwargs``: the
aspect-ratio binning of PixArt / HunyuanDiT / Sana snaps tiny sizes to >= 256 px bins).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class PipelineFixture:
    """``build(seed)`` -> pipeline; its ``resolution`` (px) and ``call_kwargs``."""

    name: str
    build: Callable[[int], Any]
    resolution: int
    call_kwargs: dict[str, Any] = field(default_factory=dict)


def fixtures() -> dict[str, PipelineFixture]:
    """name -> :class:`PipelineFixture`, over every fixture module."""
    from fewstep.testing import tiny_flow_pipelines, tiny_llm_flow_pipelines, tiny_vp_pipelines

    out = {}
    for mod in (tiny_flow_pipelines, tiny_llm_flow_pipelines, tiny_vp_pipelines):
        for name, (build, res, kw) in mod.BUILDERS.items():
            out[name] = PipelineFixture(name, build, res, dict(kw))
    return out


__all__ = ["PipelineFixture", "fixtures"]
