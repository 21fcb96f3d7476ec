"""Checkpoints trained by this project's own commands and shipped with the package.

See the README section "Shipped checkpoints" for the commands that produced each file.
"""

from __future__ import annotations

from pathlib import Path

ASSETS = Path(__file__).resolve().parent


def classifier_path() -> Path:
    """The shipped digits feature network (classifier)."""
    return ASSETS / "digits_classifier.safetensors"
