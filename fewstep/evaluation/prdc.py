"""Precision, recall, density and coverage (Naeem et al., 2020) with k-NN balls in feature space.

With real features ``R (N, d)``, fake features ``F (M, d)``, Euclidean distance ``D`` and
``r_k(x)`` the distance from ``x`` to its k-th nearest neighbour in its own set (itself excluded):

* precision = fraction of fakes inside at least one real ball ``B(R_i, r_k(R_i))``;
* recall    = fraction of reals inside at least one fake ball ``B(F_j, r_k(F_j))``;
* density   = ``1 / (k M) * sum_j #{i : D(F_j, R_i) <= r_k(R_i)}`` (can exceed 1);
* coverage  = fraction of reals whose own ball contains at least one fake.

Distances are computed in float64 on the inputs' device, in row chunks to bound memory.
"""

from __future__ import annotations

import torch
from torch import Tensor


def kth_neighbour_radius(x: Tensor, k: int, chunk: int = 2048) -> Tensor:
    """``(N,)`` distance from each row of ``x (N, d)`` to its k-th nearest other row."""
    if not 1 <= k < len(x):
        raise ValueError(f"need 1 <= k < N, got k={k}, N={len(x)}")
    x = x.double()
    out = []
    for i in range(0, len(x), chunk):
        d = torch.cdist(x[i:i + chunk], x)
        # the row's own zero distance is the 1st smallest, so the k-th neighbour is the (k+1)-th
        out.append(d.kthvalue(k + 1, dim=1).values)
    return torch.cat(out)


def prdc(real_features: Tensor, fake_features: Tensor, k: int = 5,
         chunk: int = 2048) -> dict[str, float]:
    """Return ``{"precision", "recall", "density", "coverage"}`` for ``real (N, d)`` and
    ``fake (M, d)`` features (fakes are moved to the reals' device)."""
    real = real_features.double()
    fake = fake_features.to(real.device).double()
    r_real = kth_neighbour_radius(real, k, chunk)          # (N,)
    r_fake = kth_neighbour_radius(fake, k, chunk)          # (M,)
    in_real_ball = torch.zeros(len(fake), dtype=torch.bool, device=real.device)
    density_count = torch.zeros((), dtype=torch.float64, device=real.device)
    in_fake_ball = torch.zeros(len(real), dtype=torch.bool, device=real.device)
    covered = torch.zeros(len(real), dtype=torch.bool, device=real.device)
    for j in range(0, len(fake), chunk):
        d = torch.cdist(fake[j:j + chunk], real)           # (m, N)
        inside = d <= r_real[None, :]
        in_real_ball[j:j + chunk] = inside.any(1)
        density_count += inside.sum()
        covered |= inside.any(0)
        in_fake_ball |= (d <= r_fake[j:j + chunk, None]).any(0)
    return {
        "precision": in_real_ball.double().mean().item(),
        "recall": in_fake_ball.double().mean().item(),
        "density": (density_count / (k * len(fake))).item(),
        "coverage": covered.double().mean().item(),
    }
