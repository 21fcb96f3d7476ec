"""Text-to-image figures of a student against its teacher (images ``(N, C, H, W)`` in
``[-1, 1]``; ``prompt_ids (N,)`` says which prompt each row used; rows of one prompt differ
only by their noise seed):

* ``fid_t``: Fréchet distance between the student's images and the teacher's own N-step
  samples from *independent* noise (FID-T); ``fid_t_teacher_floor``: the same distance of the
  teacher's samples from the student's noise (two draws of the teacher: the floor);
* ``fid_ref``: Fréchet distance to a reference image set (when given);
* ``clip_score``: ``max(100 * mean_i cos(image_i, prompt_i), 0)`` in a CLIP model (the
  definition of ``torchmetrics.functional.multimodal.clip_score``), and the teacher's;
* ``diversity``: mean over prompts of the mean pairwise cosine distance ``1 - cos(f_i, f_j)``
  between the features of one prompt's images (different seeds); ``diversity_ratio`` = the
  student's / the teacher's (same prompts and noise): below ``collapse_below`` (0.5) the
  student is flagged as collapsed (the same image for every seed);
* image statistics per image -- ``saturation`` (HSV: ``(max - min) / max`` of RGB, colour
  images only), ``brightness`` (mean) and ``contrast`` (standard deviation) in ``[0, 1]`` --
  reported as the student's mean, the teacher's mean and their ratio; a statistic whose
  student mean leaves the teacher's range (the 5th to 95th percentile of the teacher's
  per-image values) is flagged, e.g. over-saturation.

Each figure is computed in a feature space the caller names (``features``: its name, e.g.
``clip:/models/clip-l (CLIPModel ..., sha256 ...)``); ``warnings`` lists the flags.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor
from torch.nn import functional as F

from fewstep.evaluation.features import FeatureSpace
from fewstep.evaluation.fid import frechet_distance

COLLAPSE_BELOW = 0.5
STATS = ("saturation", "brightness", "contrast")


def diversity(features: Tensor, groups: Tensor) -> float:
    """Mean over groups of the mean pairwise cosine distance among a group's rows."""
    f = F.normalize(features.float(), dim=-1)
    vals = []
    for g in groups.unique():
        rows = f[groups.to(f.device) == g]
        if len(rows) < 2:
            continue
        iu = torch.triu_indices(len(rows), len(rows), 1, device=f.device)
        vals.append(float((1 - (rows @ rows.T)[iu[0], iu[1]]).mean()))
    if not vals:
        raise ValueError("diversity needs two or more images (seeds) of one prompt")
    return sum(vals) / len(vals)


def image_stats(images: Tensor) -> dict[str, Tensor]:
    """Per-image ``saturation`` (3-channel images only), ``brightness``, ``contrast``."""
    x = (images.float().clamp(-1, 1) + 1) / 2
    out = {"brightness": x.mean((1, 2, 3)), "contrast": x.flatten(1).std(1)}
    if x.shape[1] == 3:
        mx, mn = x.max(1).values, x.min(1).values
        out["saturation"] = ((mx - mn) / mx.clamp_min(1e-6)).mean((1, 2))
    return out


def clip_score(space: FeatureSpace, images: Tensor, prompts: Sequence[str],
               prompt_ids: Tensor) -> float:
    """``max(100 * mean cos(image, its prompt), 0)`` in ``space`` (a CLIP network)."""
    img = F.normalize(space.features(images), dim=-1)
    txt = F.normalize(space.text(list(prompts)).to(img.device), dim=-1)[prompt_ids.to(img.device)]
    return max(float(100 * (img * txt).sum(-1).mean()), 0.0)


def range_warnings(student: dict[str, Tensor], teacher: dict[str, Tensor],
                   div_ratio: float | None, collapse_below: float = COLLAPSE_BELOW
                   ) -> list[str]:
    """Flags: diversity collapse, image statistics outside the teacher's 5-95 % range."""
    out = []
    if div_ratio is not None and div_ratio < collapse_below:
        out.append(f"diversity collapse: {div_ratio:.2f} of the teacher's diversity (< "
                   f"{collapse_below:g}): the student gives nearly the same image for every seed")
    for k in STATS:
        if k not in student:
            continue
        lo, hi = torch.quantile(teacher[k].float().cpu(), torch.tensor([0.05, 0.95])).tolist()
        m = float(student[k].mean())
        if not lo <= m <= hi:
            word = {"saturation": ("over-saturated", "under-saturated"),
                    "brightness": ("too bright", "too dark"),
                    "contrast": ("too much contrast", "too little contrast")}[k]
            out.append(f"{k} {m:.3f} outside the teacher's range [{lo:.3f}, {hi:.3f}]: "
                       f"{word[0] if m > hi else word[1]}")
    return out


@dataclass
class TeacherReference:
    """What every evaluation of a student compares with, computed once: the teacher's images
    from the student's noise (``same``) and from independent noise (``ref``), their features in
    ``space`` and statistics, the CLIP scores and the reference set's features."""

    space: FeatureSpace
    prompt_ids: Tensor
    same: Tensor
    f_same: Tensor
    f_ref: Tensor
    stats: dict[str, Tensor]
    prompts: list[str] | None = None
    clip: FeatureSpace | None = None
    f_reference: Tensor | None = None
    figures: dict[str, Any] = field(default_factory=dict)


def teacher_reference(space: FeatureSpace, same: Tensor, ref: Tensor, prompt_ids: Tensor,
                      prompts: Sequence[str] | None = None, clip: FeatureSpace | None = None,
                      reference: Tensor | None = None) -> TeacherReference:
    """The :class:`TeacherReference` (``clip``: the CLIP space of the CLIP score; ``space``
    itself when it has text features)."""
    if clip is None and hasattr(space.net, "text"):
        clip = space
    r = TeacherReference(space, prompt_ids.cpu(), same, space.features(same),
                         space.features(ref), image_stats(same),
                         None if prompts is None else list(prompts), clip,
                         None if reference is None else space.features(reference))
    r.figures["fid_t_teacher_floor"] = frechet_distance(r.f_ref, r.f_same)
    if r.f_reference is not None:
        r.figures["fid_ref_teacher"] = frechet_distance(r.f_reference, r.f_same)
    if clip is not None and r.prompts is not None:
        r.figures["clip_score_teacher"] = clip_score(clip, same, r.prompts, r.prompt_ids)
    if _has_repeats(r.prompt_ids):
        r.figures["diversity_teacher"] = diversity(r.f_same, r.prompt_ids)
    return r


def _has_repeats(ids: Tensor) -> bool:
    return int(torch.unique(ids, return_counts=True)[1].max()) > 1


def t2i_metrics(student: Tensor, ref: TeacherReference,
                collapse_below: float = COLLAPSE_BELOW) -> dict[str, Any]:
    """The figures of the module docstring for the student's images ``student`` (rows as in
    ``ref.prompt_ids``, from the noise of ``ref.same``)."""
    if not torch.isfinite(student).all():
        raise ValueError("the student's images contain NaN or inf")
    fs = ref.space.features(student)
    out: dict[str, Any] = {"features": ref.space.name, "num_images": int(student.shape[0]),
                           "fid_t": frechet_distance(ref.f_ref, fs)}
    if ref.f_reference is not None:
        out["fid_ref"] = frechet_distance(ref.f_reference, fs)
    if ref.clip is not None and ref.prompts is not None:
        out["clip"] = ref.clip.name
        out["clip_score"] = clip_score(ref.clip, student, ref.prompts, ref.prompt_ids)
    out.update(ref.figures)
    ratio = None
    if "diversity_teacher" in ref.figures:
        out["diversity"] = diversity(fs, ref.prompt_ids)
        ratio = out["diversity"] / max(ref.figures["diversity_teacher"], 1e-12)
        out["diversity_ratio"] = ratio
    stats = image_stats(student)
    for k, v in stats.items():
        out[k] = float(v.mean())
        out[f"{k}_teacher"] = float(ref.stats[k].mean())
        out[f"{k}_ratio"] = out[k] / max(out[f"{k}_teacher"], 1e-12)
    out["warnings"] = range_warnings(stats, ref.stats, ratio, collapse_below)
    return out


__all__ = ["COLLAPSE_BELOW", "STATS", "TeacherReference", "clip_score", "diversity",
           "image_stats", "range_warnings", "t2i_metrics", "teacher_reference"]
