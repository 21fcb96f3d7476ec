"""Teachers read from diffusers pipelines (``teacher.kind: diffusers``; docs/adapters.md).

One recording of a pipeline's own ``__call__`` tells fewstep how to call its denoiser
(:mod:`.recorder`, :mod:`.call_spec`), its scheduler's levels and prediction type
(:mod:`.scheduler_probe`), its guidance form (:mod:`.guidance_forms`) and latent layouts
(:mod:`.layouts`); the conditioning ``__call__`` passes is cached per prompt
(:mod:`.conditioning_cache`). :mod:`.families` holds what a recording cannot show, in entries
registered the way a user's ``plugins:`` module registers its own (fewstep's:
:mod:`.family_entries`, imported below); :mod:`.support` says which pipeline classes are
supported and why the others are not; :mod:`.teacher_check` compares fewstep's teacher with
the pipeline's own ``__call__``.
"""

from fewstep.teachers.diffusers import family_entries as _family_entries  # noqa: F401
