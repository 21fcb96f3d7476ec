"""Metrics for 2-D toy point clouds ``(N, 2)``: sliced Wasserstein distance and mode coverage.

Mode distance: Euclidean to the nearest :func:`fewstep.data.toy_modes` centre, except for the
checkerboard where it is the Chebyshev (L-inf) distance, so radius 0.5 means "inside a black
square". Default radii (:data:`DEFAULT_RADIUS`): 8gaussians 0.3 (3 std), checkerboard 0.5,
moons 0.3 (moons' "modes" are the ends and apex of each arc, so its quality is a partial-support
score: real data scores well below 1 there).
"""

from __future__ import annotations

import torch
from torch import Tensor

from fewstep.data.toy2d import toy_modes

DEFAULT_RADIUS = {"8gaussians": 0.3, "checkerboard": 0.5, "moons": 0.3}


def random_directions(num: int, dim: int, generator: torch.Generator | None = None,
                      dtype: torch.dtype = torch.float64,
                      device: torch.device | str | None = None) -> Tensor:
    """``(num, dim)`` unit vectors, uniform on the sphere; drawn on the generator's device (CPU
    by default) and then moved to ``device``."""
    gdev = generator.device if generator is not None else torch.device("cpu")
    v = torch.randn(num, dim, generator=generator, dtype=torch.float64, device=gdev)
    v = v / v.norm(dim=1, keepdim=True)
    return v.to(device=device, dtype=dtype)


def wasserstein_1d(u: Tensor, v: Tensor, p: float = 1.0) -> Tensor:
    """Exact ``W_p^p`` between uniform empirical measures on the columns of ``u (n, P)`` and
    ``v (m, P)`` (one 1-D problem per column; ``n`` and ``m`` may differ). Returns ``(P,)``.

    Integrates ``|F_u^{-1}(q) - F_v^{-1}(q)|^p dq`` exactly over the merged quantile breakpoints
    ``{i/n} U {j/m}``."""
    n, m = u.shape[0], v.shape[0]
    us, _ = u.sort(dim=0)
    vs, _ = v.sort(dim=0)
    qs = torch.cat([torch.arange(1, n + 1, dtype=torch.float64, device=u.device) / n,
                    torch.arange(1, m + 1, dtype=torch.float64, device=u.device) / m])
    qs = qs.unique()                                            # sorted breakpoints, last = 1
    dq = torch.diff(qs, prepend=qs.new_zeros(1))                # interval widths
    mid = qs - dq / 2                                           # a point inside each interval
    iu = (mid * n).floor().long().clamp_max(n - 1)
    iv = (mid * m).floor().long().clamp_max(m - 1)
    return (dq[:, None] * (us[iu] - vs[iv]).abs().pow(p)).sum(0)


def sliced_wasserstein(x: Tensor, y: Tensor, num_projections: int = 256, p: float = 2.0,
                       generator: torch.Generator | None = None,
                       directions: Tensor | None = None) -> float:
    """Sliced ``SW_p = (mean_theta W_p^p(x.theta, y.theta))^(1/p)`` between ``x (n, d)`` and
    ``y (m, d)``. Directions are ``directions (P, d)`` if given, else ``num_projections`` draws
    from :func:`random_directions` with ``generator`` (pass one for reproducible values).
    Computed in float64 on ``x``'s device."""
    x = x.double()
    y = y.to(x.device).double()
    if directions is None:
        directions = random_directions(num_projections, x.shape[1], generator, device=x.device)
    theta = directions.to(device=x.device, dtype=torch.float64)
    wp = wasserstein_1d(x @ theta.T, y @ theta.T, p)
    return wp.mean().pow(1.0 / p).item()


def mode_distance(points: Tensor, name: str) -> Tensor:
    """``(N, M)`` distance of each point to each of the toy's ``M`` modes (see module doc)."""
    modes = toy_modes(name).to(device=points.device, dtype=points.dtype)
    diff = points[:, None, :] - modes[None]
    if name == "checkerboard":
        return diff.abs().amax(-1)
    return diff.norm(dim=-1)


def mode_stats(points: Tensor, name: str, radius: float | None = None,
               min_share: float = 0.25) -> dict[str, float]:
    """Mode coverage and quality of ``points (N, 2)`` for toy ``name``.

    * ``mode_coverage``: fraction of modes holding at least ``min_share`` of their fair share
      (``N / M`` points) within ``radius`` (points are assigned to their nearest mode);
    * ``quality``: fraction of points within ``radius`` of some mode.
    """
    radius = DEFAULT_RADIUS[name] if radius is None else radius
    d = mode_distance(points, name)
    dmin, nearest = d.min(dim=1)
    near = dmin <= radius
    m = d.shape[1]
    counts = torch.bincount(nearest[near], minlength=m)
    covered = counts >= min_share * len(points) / m
    return {"mode_coverage": covered.double().mean().item(),
            "quality": near.double().mean().item()}
