"""Networks for teachers trained by fewstep. Each is built from a plain dict config (see
:func:`fewstep.networks.registry.build_network`) so checkpoints carry the config that made them;
each network class registers itself in :data:`~fewstep.networks.registry.NETWORKS`."""

from fewstep.networks.mlp import ResMLP
from fewstep.networks.registry import NETWORKS, build_network, network_denoiser
from fewstep.networks.unet import UNet

__all__ = ["NETWORKS", "ResMLP", "UNet", "build_network", "network_denoiser"]
