"""Weights are only read from safetensors: a local folder holding only pickled weights is
refused up front with how to convert it."""

from __future__ import annotations

from pathlib import Path

from fewstep.errors import ConfigError

_PICKLED = (".bin", ".ckpt", ".pt", ".pth", ".pkl")


def require_safetensors(pretrained: str, field: str = "teacher.pretrained") -> None:
    """``ConfigError`` if the local folder ``pretrained`` has pickled weight files and no
    ``.safetensors`` beside them (hub ids are checked by ``use_safetensors=True`` on load)."""
    root = Path(pretrained).expanduser()
    if not root.is_dir():
        return
    for folder in [root, *(p for p in root.iterdir() if p.is_dir())]:
        pickled = [f for f in folder.iterdir() if f.suffix in _PICKLED and f.is_file()]
        if pickled and not any(f.suffix == ".safetensors" for f in folder.iterdir()):
            raise ConfigError(
                f"{field}: {pickled[0]} is a pickled weight file and fewstep only reads "
                "safetensors; convert the folder once with diffusers: "
                "DiffusionPipeline.from_pretrained(folder, use_safetensors=False)"
                ".save_pretrained(new_folder, safe_serialization=True)")


__all__ = ["require_safetensors"]
