"""The docs name code that exists: every ``path/to/module.py:Name.attr`` reference in
docs/tour.md (and the other docs) resolves to a module under fewstep/ and an attribute in it."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[1] / "docs"
REF = re.compile(r"`([a-z_/]+\.py):([A-Za-z_][\w.]*)`")


def _refs(doc: Path) -> list[tuple[str, str]]:
    return REF.findall(doc.read_text(encoding="utf-8"))


def test_the_tour_cites_names() -> None:
    assert len(_refs(DOCS / "tour.md")) >= 30


@pytest.mark.parametrize("doc", sorted(DOCS.glob("*.md")), ids=lambda p: p.name)
def test_cited_names_exist(doc: Path) -> None:
    missing = []
    for path, name in _refs(doc):
        module = "fewstep." + path.removesuffix(".py").replace("/", ".")
        try:
            obj = importlib.import_module(module)
        except ImportError:
            missing.append(f"{path} (no module {module})")
            continue
        for part in name.split("."):
            if not hasattr(obj, part):
                missing.append(f"{path}:{name}")
                break
            obj = getattr(obj, part)
    assert not missing, f"{doc.name} names code that does not exist: {missing}"
