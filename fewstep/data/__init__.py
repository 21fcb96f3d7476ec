"""Embedded data: scikit-learn's 8x8 digits and 2-D toy distributions (no downloads)."""

from fewstep.data.digits import DIGITS_NULL_CLASS, DIGITS_SHAPE, load_digits_split
from fewstep.data.toy2d import TOY_NAMES, toy_modes, toy_sample

__all__ = ["DIGITS_NULL_CLASS", "DIGITS_SHAPE", "TOY_NAMES", "load_digits_split", "toy_modes",
           "toy_sample"]
