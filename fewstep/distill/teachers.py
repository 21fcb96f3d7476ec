"""Re-export of the teacher registry (:mod:`fewstep.teachers`) for the trainer."""

from fewstep.teachers import LoadedTeacher, load_teacher, meta_teacher, rebuild_denoiser
from fewstep.teachers.base import dtype_kwargs, torch_dtype, weights_probe
from fewstep.teachers.pipeline import prompt_cache_for

_dtype_kwargs = dtype_kwargs  # old name, still imported by student_pipeline.py

__all__ = ["LoadedTeacher", "load_teacher", "meta_teacher", "prompt_cache_for",
           "rebuild_denoiser", "torch_dtype", "weights_probe"]
