"""The teacher's N-step sampler: a copy of the pipeline's own scheduler, stepped with fewstep's
denoiser.

At step ``k`` (timestep ``t_k``, scheduler sample ``x_t = c_k x_flow``, ``c_k = alpha_k +
sigma_k`` from :mod:`~fewstep.teachers.diffusers.scheduler_probe`): ``x0_hat = D.guided(x_flow,
s_k, cond, w)``, converted to the scheduler's ``model_output``
(:meth:`~fewstep.teachers.diffusers.pipeline_denoiser.PipelineDenoiser.model_output`), then
``scheduler.step(model_output, t_k, x_t, **recorded step kwargs)``. PNDM, DPM-Solver, UniPC,
Euler, DDPM therefore reproduce ``__call__`` while the Denoiser stays in sigma space. The step
runs in the pipeline's loop layout (identical for elementwise steps; keeps a stochastic step's
noise draws in the pipeline's order).
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import Tensor

from fewstep.core.samplers import Trajectory
from fewstep.teachers.diffusers.pipeline_denoiser import PipelineDenoiser
from fewstep.teachers.diffusers.scheduler_probe import probe


def _clone_generator(g: torch.Generator) -> torch.Generator:
    out = torch.Generator(device=g.device)
    out.set_state(g.get_state())
    return out


@torch.no_grad()
def scheduler_sample(den: PipelineDenoiser, x_t: Tensor, cond: Any, w: float,
                     exact_time: bool = True, step_kwargs: dict[str, Any] | None = None,
                     scheduler: Any = None) -> Trajectory:
    """Sample from the scheduler sample ``x_t (B, C, H, W)`` of the first timestep.

    ``exact_time``: feed the network the scheduler's own ``t_k`` (as ``__call__`` does), else
    the continuous ``t(s_k)`` of ``D(x, s)``. ``step_kwargs``: the recorded ones by default (a
    recorded generator is replayed from its state at step 0); ``scheduler``: another configured
    copy (other N) instead of the recorded one.

    Returns a :class:`~fewstep.core.samplers.Trajectory` on the flow path: ``xs`` / ``x0s`` at
    each distinct level (a repeated PNDM level keeps its last evaluation), ``final`` the last
    scheduler sample: what ``__call__`` decodes."""
    sp = den.spec
    sched = copy.deepcopy(sp.scheduler if scheduler is None else scheduler)
    kw = {k: (_clone_generator(v) if isinstance(v, torch.Generator) else v)
          for k, v in (sp.step_kwargs if step_kwargs is None else step_kwargs).items()
          if k != "return_dict"}
    pr = sp.probe if scheduler is None else probe(scheduler)
    lay, asp = sp.loop_layout, sp.aspect
    levels = pr.levels.tolist()
    traj = Trajectory(sigmas=pr.distinct_levels()[:-1])
    x = x_t
    for k, t in enumerate(sched.timesteps):
        c = float(pr.scale[k])
        s = torch.full((x.shape[0],), levels[k], device=x.device)
        xf = x / c
        x0 = den.guided(xf, s, cond, w, timestep=t if exact_time else None)
        if k > 0 and levels[k] == levels[k - 1]:  # PNDM: the same level evaluated again
            traj.xs[-1], traj.x0s[-1] = xf, x0
        else:
            traj.xs.append(xf)
            traj.x0s.append(x0)
        m = den.model_output(xf, s, x0)
        x = lay.to_bchw(sched.step(lay.to_native(m), t, lay.to_native(x), return_dict=False,
                                   **kw)[0], asp)
    traj.final = x
    return traj


__all__ = ["scheduler_sample"]
