"""Named presets (YAML) shipped with the package: ``preset_path("demo")``."""

from __future__ import annotations

from pathlib import Path

from fewstep.errors import ConfigError

PRESETS = Path(__file__).resolve().parent


def preset_path(name: str) -> Path:
    """Path of ``presets/<name>.yaml``; a :class:`ConfigError` listing the presets if unknown."""
    p = PRESETS / f"{name}.yaml"
    if not p.is_file():
        known = sorted(q.stem for q in PRESETS.glob("*.yaml"))
        raise ConfigError(f"unknown preset {name!r}; available: {', '.join(known)}")
    return p
