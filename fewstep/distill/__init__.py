"""Distillation: the K-step student, shared building blocks, the methods and the trainer.

Library pieces (``student``, ``discriminator``, ``fake_score``, ``losses``, ``teacher_cache``)
know nothing of any particular recipe; each recipe lives in one file under ``methods/``.
"""

from __future__ import annotations

# importing the methods package registers every method and its config (the run config is a
# union over them), so any import of fewstep.distill.* can validate a run config
import fewstep.distill.methods  # noqa: F401
