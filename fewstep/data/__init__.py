"""Data: the built-in data sets (registered in :data:`~fewstep.data.registry.DATASETS`:
scikit-learn's 8x8 digits and 2-D toy distributions, no downloads), your own images
(:mod:`fewstep.data.images`) and prompts (:mod:`fewstep.data.prompts`)."""

from fewstep.data import digits, toy2d  # noqa: F401  (the built-in data sets register here)
from fewstep.data.digits import DIGITS_NULL_CLASS, DIGITS_SHAPE, load_digits_split
from fewstep.data.registry import DATASETS, BuiltinData
from fewstep.data.toy2d import TOY_NAMES, toy_modes, toy_sample

__all__ = ["DATASETS", "DIGITS_NULL_CLASS", "DIGITS_SHAPE", "TOY_NAMES", "BuiltinData",
           "load_digits_split", "toy_modes", "toy_sample"]
