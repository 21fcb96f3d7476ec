"""Distillation: the K-step student, shared building blocks, the methods and the trainer.

Library pieces (``student``, ``discriminator``, ``fake_score``, ``losses``, ``teacher_cache``)
know nothing of any particular recipe; each recipe lives in one file under ``methods/``.
"""
