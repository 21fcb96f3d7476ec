"""A fixed text-to-image evaluation: ``P`` prompts x ``S`` seeds, the teacher's own N-step
samples once, the student's K-step samples each time (:class:`FixedEval`; used by ``fewstep
eval --run`` and every ``train.eval_every`` steps).

Rows are prompt-major (``prompt_ids = [0]*S + [1]*S + ...``); the student and the teacher's
``same`` images share noise and prompts, the teacher's ``ref`` images use independent noise
(``seed + 1``), the student's fresh-transition noise comes from a generator seeded with
``seed + 2`` -- so two evaluations of the same weights give the same figures. Latents are
decoded with the teacher's VAE (``problem.decode``); class-conditional image problems work too
(labels instead of prompts, no CLIP score).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from fewstep.core.samplers import euler_sample
from fewstep.evaluation.features import FeatureSpace
from fewstep.evaluation.t2i import TeacherReference, t2i_metrics, teacher_reference


@dataclass
class Grid:
    """Which condition each row uses and its noise (see module docstring)."""

    ids: Tensor
    noise: Tensor
    ref_noise: Tensor
    prompts: list[str] | None


def eval_grid(problem: Any, num_prompts: int, seeds: int, seed: int) -> Grid:
    """``num_prompts`` conditions spread over the problem's prompts (or classes) x ``seeds``."""
    total = int(getattr(problem, "num_prompts", 0) or problem.num_classes)
    if total < 1:
        raise ValueError("a fixed evaluation needs prompts or classes (unconditional data: use "
                         "fewstep eval)")
    p = min(num_prompts, total)
    chosen = torch.linspace(0, total - 1, p).round().long().unique()
    ids = chosen.repeat_interleave(seeds)
    shape = (len(ids), *problem.data_shape)
    noise = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    ref = torch.randn(shape, generator=torch.Generator().manual_seed(seed + 1))
    store = getattr(problem, "prompts", None)
    texts = getattr(store, "prompts", None)
    prompts = None if texts is None else [str(texts[i]) for i in range(total)]
    return Grid(ids, noise, ref, prompts)


def _cond(problem: Any, ids: Tensor, device: torch.device) -> Any:
    return problem.cond_map(ids.to(device))


def _decode(problem: Any, latents: Tensor) -> Tensor:
    dec = getattr(problem, "decode", None)
    return (dec(latents) if dec is not None else latents).float().cpu()


@torch.no_grad()
def teacher_images(teacher: Any, problem: Any, ids: Tensor, noise: Tensor, device: torch.device,
                   batch: int = 8) -> Tensor:
    """The teacher's own N-step sampler (its levels, guidance and noise scale) -> images."""
    out = []
    for i in range(0, len(ids), batch):
        e = noise[i:i + batch].to(device) * teacher.noise_scale
        x = euler_sample(teacher.denoiser, e, _cond(problem, ids[i:i + batch], device),
                         teacher.sigmas, teacher.cfg_scale).sample
        out.append(_decode(problem, x))
    return torch.cat(out)


@torch.no_grad()
def student_images(student: Any, problem: Any, grid: Grid, device: torch.device, seed: int,
                   batch: int = 8) -> Tensor:
    """The student's K steps from the grid's noise -> images (fixed fresh-noise stream)."""
    g = torch.Generator().manual_seed(seed + 2)
    out = []
    with student.merged():
        for i in range(0, len(grid.ids), batch):
            x = student.generate(grid.noise[i:i + batch].to(device),
                                 _cond(problem, grid.ids[i:i + batch], device),
                                 generator=g).sample
            out.append(_decode(problem, x))
    return torch.cat(out)


class FixedEval:
    """Score students on one fixed grid against the teacher (computed on first use).

    Args:
        teacher: a :class:`~fewstep.teachers.LoadedTeacher` (denoiser, sigmas, cfg_scale,
            noise_scale, problem with ``decode`` / ``cond_map``).
        space: the feature space of FID-T / diversity; ``clip``: of the CLIP score (``None``:
            ``space`` if it is a CLIP network, else no CLIP score).
        reference: reference images ``(M, C, H, W)`` in ``[-1, 1]`` for ``fid_ref``.
    """

    def __init__(self, teacher: Any, space: FeatureSpace, num_prompts: int = 8,
                 seeds: int = 4, seed: int = 1234, clip: FeatureSpace | None = None,
                 reference: Tensor | None = None, device: torch.device | str = "cpu",
                 batch: int = 8, collapse_below: float = 0.5) -> None:
        self.teacher, self.space, self.clip = teacher, space, clip
        self.problem = teacher.problem
        self.grid = eval_grid(self.problem, num_prompts, seeds, seed)
        self.seed, self.batch, self.collapse_below = seed, batch, collapse_below
        self.device = torch.device(device)
        self.reference = reference
        self._ref: TeacherReference | None = None

    @property
    def ref(self) -> TeacherReference:
        """The teacher's side (sampled once)."""
        if self._ref is None:
            g = self.grid
            same = teacher_images(self.teacher, self.problem, g.ids, g.noise, self.device,
                                  self.batch)
            other = teacher_images(self.teacher, self.problem, g.ids, g.ref_noise, self.device,
                                   self.batch)
            self._ref = teacher_reference(self.space, same, other, g.ids, g.prompts, self.clip,
                                          self.reference)
        return self._ref

    def __call__(self, student: Any) -> tuple[dict[str, Any], Tensor]:
        """``(figures, the student's images)``; the student's mode is restored."""
        ref = self.ref
        was = student.training
        student.eval()
        try:
            images = student_images(student, self.problem, self.grid, self.device, self.seed,
                                    self.batch)
        finally:
            student.train(was)
        return t2i_metrics(images, ref, self.collapse_below), images


__all__ = ["FixedEval", "Grid", "eval_grid", "student_images", "teacher_images"]
