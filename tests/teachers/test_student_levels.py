"""Student input levels taken from the teacher's own sampler levels."""

from __future__ import annotations

import torch

from fewstep.core.levels import student_sigmas_from_levels


def test_student_levels_follow_the_teacher_levels():
    levels = torch.tensor([0.99, 0.8, 0.6, 0.3, 0.0])
    torch.testing.assert_close(student_sigmas_from_levels(levels, 2), torch.tensor([1.0, 0.6]))
    torch.testing.assert_close(student_sigmas_from_levels(levels, 3), torch.tensor([1.0, 2 / 3,
                                                                                   1 / 3]))
