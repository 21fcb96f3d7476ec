"""fewstep: distill diffusion / flow-matching generators into few-step generators.

Conventions used everywhere (see ``fewstep.core.path``):

* noise level ``sigma`` in [0, 1]; ``sigma = 1`` is pure noise, ``sigma = 0`` is data;
* ``x_sigma = (1 - sigma) * x0 + sigma * eps`` with ``eps ~ N(0, I)``;
* every network is wrapped as a :class:`fewstep.core.denoiser.Denoiser` returning ``x0_hat``.
"""

from fewstep.core.denoiser import Denoiser, NetworkDenoiser
from fewstep.core.path import FlowPath

__all__ = ["Denoiser", "FlowPath", "NetworkDenoiser"]
__version__ = "0.1.0"
