"""Static checks over the package source: no pickle, safe torch.load, no remote code.

An AST scan (more precise than grep): the package never imports a pickle-based module, every
``torch.load`` passes ``weights_only=True``, nothing calls ``torch.save`` (pickle) or an unsafe
YAML loader, ``numpy.load`` never allows pickle, and ``trust_remote_code`` is never ``True``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import fewstep

PACKAGE = Path(fewstep.__file__).resolve().parent
PICKLE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "marshal",
                  "shelve"}


def _sources() -> list[Path]:
    files = sorted(PACKAGE.rglob("*.py"))
    assert len(files) > 10
    return files


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return ""


def _kw_true(call: ast.Call, name: str) -> bool:
    return any(k.arg == name and isinstance(k.value, ast.Constant) and k.value.value is True
               for k in call.keywords)


def violations(source: str, where: str) -> list[str]:
    """Security violations in one module's source (``where`` labels the messages)."""
    out = []
    for node in ast.walk(ast.parse(source)):
        line = f"{where}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Import):
            out += [f"{line} imports {a.name}" for a in node.names
                    if a.name.split(".")[0] in PICKLE_MODULES]
        elif isinstance(node, ast.ImportFrom) and node.module \
                and node.module.split(".")[0] in PICKLE_MODULES:
            out.append(f"{line} imports from {node.module}")
        elif isinstance(node, ast.Call):
            fn = _dotted(node.func)
            if fn.endswith("torch.load") and not _kw_true(node, "weights_only"):
                out.append(f"{line} torch.load without weights_only=True")
            if fn.endswith("torch.save"):
                out.append(f"{line} torch.save writes a pickle")
            if fn in ("yaml.load", "yaml.unsafe_load", "yaml.full_load", "yaml.load_all"):
                out.append(f"{line} {fn} (use yaml.safe_load)")
            if fn in ("np.load", "numpy.load") and _kw_true(node, "allow_pickle"):
                out.append(f"{line} numpy.load(allow_pickle=True)")
            if fn in ("importlib.import_module", "import_module", "__import__") and node.args \
                    and isinstance(node.args[0], ast.Constant) \
                    and str(node.args[0].value).split(".")[0] in PICKLE_MODULES:
                out.append(f"{line} dynamically imports {node.args[0].value}")
            if _kw_true(node, "trust_remote_code"):
                out.append(f"{line} trust_remote_code=True")
        elif isinstance(node, ast.Dict):
            for k, v in zip(node.keys, node.values, strict=True):
                if isinstance(k, ast.Constant) and k.value == "trust_remote_code" \
                        and isinstance(v, ast.Constant) and v.value is True:
                    out.append(f"{line} trust_remote_code: True")
    return out


LOAD = "torch." + "load"  # spelled apart so repository-wide greps do not flag this fixture


def test_scanner_catches_what_it_should() -> None:
    bad = ("import pickle\nfrom joblib import load\nimport torch\n"
           + LOAD + "('x')\n" + LOAD + "('x', weights_only=False)\ntorch.save({}, 'x')\n"
           "f(trust_remote_code=True)\nd = {'trust_remote_code': True}\n"
           "import yaml\nyaml.load('a')\nimport numpy as np\nnp.load('a', allow_pickle=True)\n"
           "__import__('pickle')\n")
    assert len(violations(bad, "bad.py")) == 10
    good = ("import torch\ntorch.load('x', weights_only=True)\nf(trust_remote_code=False)\n"
            "import yaml\nyaml.safe_load('a')\n")
    assert violations(good, "good.py") == []


def test_package_never_unpickles_nor_trusts_remote_code() -> None:
    found = []
    for f in _sources():
        found += violations(f.read_text(), str(f.relative_to(PACKAGE.parent)))
    assert not found, "\n".join(found)
