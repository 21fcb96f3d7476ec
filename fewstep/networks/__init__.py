"""Networks for the embedded problems. Each is built from a plain dict config (see
:func:`fewstep.networks.registry.build_network`) so checkpoints carry the config that made them."""

from fewstep.networks.mlp import ResMLP
from fewstep.networks.registry import build_network
from fewstep.networks.unet import UNet

__all__ = ["ResMLP", "UNet", "build_network"]
