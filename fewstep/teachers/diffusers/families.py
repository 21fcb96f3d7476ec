"""Family entries: what a recording of the pipeline's own ``__call__`` cannot show.

Everything else -- which denoiser arguments are latent / time / conditioning, the time-input
map, the output sign, the guidance form, the prediction type, the levels, the prompt encoding --
is read from the pipeline (:mod:`fewstep.teachers.diffusers.call_spec`). An entry only *pins or
adds*; every field is optional:

* ``denoiser``: the component name when it is not ``transformer`` / ``unet``;
* ``net_layout`` / ``loop_layout``: a :data:`~fewstep.teachers.diffusers.layouts.LAYOUTS` name;
* ``guidance``: a :data:`~fewstep.teachers.diffusers.guidance_forms.GUIDANCE_FORMS` name;
* ``cfg_call``: ``__call__`` kwargs that switch true CFG on, to capture the null branch of a
  pipeline whose default runs without it (default: ``negative_prompt=""`` and the guidance
  scale raised to 2, see :func:`~fewstep.teachers.diffusers.capture.null_call_kwargs`);
* ``decode``: ``(pipe, latents (B, C, H, W)) -> images (B, 3, H, W)`` in ``[-1, 1]`` when the
  generic decoder (:mod:`~fewstep.teachers.diffusers.codec`) is wrong;
* ``attributes``: ``(pipe, height, width) -> {name: value}``, instance attributes the
  pipeline needs but does not save (set after loading, and by an export's sampling code);
* ``lora_targets`` / ``feature_blocks``: training defaults (LoRA target name suffixes; the
  network's ``ModuleList`` whose block outputs are the discriminator features).

Entries are keyed by the pipeline class name or the denoiser class name; both apply, the
pipeline's fields winning (:func:`family_for`). fewstep's own entries
(:mod:`fewstep.teachers.diffusers.family_entries`) are registered exactly as a user's are::

    from fewstep.teachers.diffusers.families import FAMILIES, Family

    FAMILIES.register("Kandinsky3Pipeline")(Family(decode=movq_decode))

in a module named under ``plugins:`` in the run config (or ``--plugin`` on the command line).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from typing import Any

from fewstep.utils.registry import Registry


@dataclass(frozen=True)
class Family:
    """One family entry (see module docstring); ``None`` fields are read from the pipeline."""

    denoiser: str | None = None
    net_layout: str | None = None
    loop_layout: str | None = None
    guidance: str | None = None
    cfg_call: dict[str, Any] | None = None
    decode: Callable[[Any, Any], Any] | None = None
    attributes: Callable[[Any, int, int], dict[str, Any]] | None = None
    lora_targets: tuple[str, ...] | None = None
    feature_blocks: str | None = None

    def over(self, base: Family) -> Family:
        """``base`` with this entry's set fields."""
        return replace(base, **{f.name: getattr(self, f.name) for f in fields(self)
                                if getattr(self, f.name) is not None})


#: pipeline or denoiser class name -> :class:`Family`
FAMILIES: Registry[Family] = Registry("diffusers family", "teacher.pretrained")


def family_for(pipeline_class: str, denoiser_class: str | None) -> tuple[Family, list[str]]:
    """The entry of a pipeline: its denoiser class's entry overridden by its pipeline class's;
    also the keys that matched (empty: everything is read from the pipeline)."""
    fam, keys = Family(), []
    for key in (denoiser_class, pipeline_class):
        if key is not None and key in FAMILIES:
            fam = FAMILIES.get(key).over(fam)
            keys.append(key)
    return fam, keys


__all__ = ["FAMILIES", "Family", "family_for"]
