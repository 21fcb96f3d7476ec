"""``fewstep teacher check PIPELINE``: a saved tiny Z-Image pipeline passes against its own
``__call__`` (exit 0, the report names what was found); bad pipelines are one line, exit 2."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fewstep.app.cli import app
from fewstep.testing.pipeline_fixtures import fixtures


@pytest.fixture(scope="module")
def zimage_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("teacher_check") / "zimage"
    fixtures()["zimage"].build(0).save_pretrained(out, safe_serialization=True)
    return out


def _check(*args: str) -> tuple[int, str]:
    r = CliRunner().invoke(app, ["teacher", "check", *args])
    return r.exit_code, r.output


def test_check_passes_and_reports(zimage_folder: Path) -> None:
    code, out = _check(str(zimage_folder), "--steps", "2", "--height", "16", "--width", "16",
                       "--prompt", "a red car")
    assert code == 0, out
    for field in ("prediction    flow", "time input", "levels", "guidance      cfg",
                  "max abs diff", "not matched   nothing", "PASSED"):
        assert field in out, (field, out)
    code, out = _check(str(zimage_folder), "--steps", "2", "--height", "16", "--width", "16",
                       "--json")
    assert code == 0, out
    r = json.loads(out[out.index("{"):])
    assert r["passed"] and r["diff"] <= r["tolerance"] == 1e-4


@pytest.mark.parametrize(("index", "field", "why"), [
    ({"_class_name": "StableDiffusionImg2ImgPipeline"}, "PIPELINE", "edit"),
    ({"_class_name": "StableCascadeDecoderPipeline"}, "PIPELINE", "cascaded"),
    ({"_class_name": "WanPipeline"}, "PIPELINE", "Wan"),
])
def test_unsupported_pipelines_are_one_line_exit_2(tmp_path: Path, index: dict[str, str],
                                                   field: str, why: str) -> None:
    (tmp_path / "model_index.json").write_text(json.dumps(index))
    code, out = _check(str(tmp_path))
    assert code == 2, out
    assert f"{field}:" in out and why in out, out
    assert "Traceback" not in out


def test_missing_component_and_bad_options_exit_2(zimage_folder: Path, tmp_path: Path) -> None:
    broken = tmp_path / "novae"
    shutil.copytree(zimage_folder, broken)
    shutil.rmtree(broken / "vae")
    code, out = _check(str(broken))
    assert code == 2 and "PIPELINE:" in out and "'vae'" in out, out
    code, out = _check(str(zimage_folder), "--set", "not a kwarg")
    assert code == 2 and "--set:" in out, out
    code, out = _check(str(zimage_folder), "--height", "16")
    assert code == 2 and "--height / --width" in out, out
    code, out = _check(str(zimage_folder), "--set", "nonexistent_arg=1", "--steps", "2")
    assert code == 2 and "nonexistent_arg" in out, out
