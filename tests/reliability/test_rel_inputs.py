"""Up-front input checks (:mod:`fewstep.app.validation`, config reading): one line naming the
field or path and the reason."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from fewstep.app import validation as v
from fewstep.errors import CheckpointError, ConfigError
from fewstep.teachers.training import TeacherConfig
from fewstep.utils.config_files import load_config, load_yaml
from fewstep.utils.files import read_metadata


@pytest.mark.parametrize(("content", "expect"), [
    (b"\x7fELF\x02\x01\x00\x00train:", "is a binary file"),
    ("data: caf\u00e9\n".encode("latin-1"), r"is not UTF-8 text \(byte 0xe9 at offset 9\)"),
    ("data: digits\n".encode("utf-16"), "is UTF-16 text, expected a config file in UTF-8"),
    (b"a: " + b"[" * 5000 + b"]" * 5000, "nested deeper than 64 levels"),  # refused before parsing
])
def test_config_files_that_are_not_yaml_text(tmp_path: Path, content: bytes, expect: str
                                             ) -> None:
    p = tmp_path / "c.yaml"
    p.write_bytes(content)
    with pytest.raises(ConfigError, match=expect) as e:
        load_yaml(p)
    assert str(p) in str(e.value) and "\n" not in str(e.value)


def test_directory_is_not_reported_as_not_found(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"is a directory, expected a config file"):
        load_yaml(tmp_path)
    with pytest.raises(CheckpointError, match=r"is a directory, expected a file"):
        read_metadata(tmp_path)
    with pytest.raises(ConfigError, match=r"^--teacher: .* is a directory, expected a file$"):
        v.input_file(tmp_path, "--teacher")
    with pytest.raises(ConfigError, match=r"config file not found"):
        load_yaml(tmp_path / "missing.yaml")


def test_override_errors_name_the_override_not_the_file(tmp_path: Path) -> None:
    p = tmp_path / "preset.yaml"
    p.write_text("data: checkerboard\nlr: 0.001\n")
    with pytest.raises(ConfigError, match=r"^override 'lr=-1': lr: Input should be greater"):
        load_config(TeacherConfig, p, ["steps=10", "lr=-1"])
    with pytest.raises(ConfigError, match=r"^override 'network.hidden=2': network.hidden"):
        load_config(TeacherConfig, p, ["network.hidden=2"])
    p.write_text("data: checkerboard\nlr: -5\n")
    with pytest.raises(ConfigError, match=rf"^invalid {p}: lr: "):
        load_config(TeacherConfig, p, ["steps=10"])


@pytest.mark.parametrize("bad", [-1, 2**32, 2**64, 10**30])
def test_seeds_outside_what_the_generators_take(bad: int) -> None:
    with pytest.raises(ConfigError, match=r"^--seed: .* out of range"):
        v.seed(bad)
    with pytest.raises(ConfigError, match=r"seed: Input should be"):
        load_config(TeacherConfig, None, [f"seed={bad}"])
    for ok in (0, 2**32 - 1):  # the edges work in every generator the code seeds
        v.seed(ok)
        torch.manual_seed(ok)


def test_samplers_counts_plan_options() -> None:
    assert v.sampler_steps(["teacher_8", " student_2"]) == ["teacher_8", "student_2"]
    for bad, expect in [(["teacher_0"], "steps must be >= 1"),
                        (["teacher_10000000000000000000000"], "steps must be <= 1000"),
                        (["euler_4"], "unknown sampler"), ([""], "unknown sampler")]:
        with pytest.raises(ConfigError, match=rf"^--samplers: .*{expect}"):
            v.sampler_steps(bad)
    with pytest.raises(ConfigError, match=r"^--num: 0 is out of range"):
        v.count(0, "--num")
    for gpus, mem in [(0, None), (-2, None), (1, -1.0), (1, math.nan), (1, math.inf), (1, 0.0)]:
        with pytest.raises(ConfigError, match=r"^--gpu"):
            v.plan_options(gpus, mem)
    v.plan_options(8, 80.0)


def test_devices() -> None:
    assert v.device("cpu") == torch.device("cpu")
    with pytest.raises(ConfigError, match=r"^--device: unknown device 'tpu'"):
        v.device("tpu")
    with pytest.raises(ConfigError, match=r"^--device: 'cpu:3'"):
        v.device("cpu:3")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match=r"^--device: 'cuda:1' is not available"):
            v.device("cuda:1")


def test_output_paths(tmp_path: Path) -> None:
    f = tmp_path / "f.txt"
    f.write_text("x")
    with pytest.raises(ConfigError, match=r"^--out: .* is an existing file, expected a folder"):
        v.output_dir(f)
    with pytest.raises(ConfigError, match=r"^--out: cannot create .*: .*f.txt is a file"):
        v.output_dir(f / "sub" / "deeper")
    with pytest.raises(ConfigError, match=r"^--out: .* is a directory, expected a file"):
        v.output_file(tmp_path)
    assert v.output_dir(tmp_path / "new") == tmp_path / "new"


def test_teacher_student_and_data_must_fit() -> None:
    ck = {"network": {"data_shape": [2], "num_classes": 0}, "data": "checkerboard"}
    dg = {"network": {"data_shape": [1, 16, 16], "num_classes": 10}, "data": "digits"}
    with pytest.raises(ConfigError, match=r"^--teacher: the teacher was trained on "
                                          r"'checkerboard' but the data set is 'digits'"):
        v.models_fit("digits", (1, 16, 16), 10, ck, "--teacher")
    student = {"denoiser": ck, "data": "checkerboard"}
    with pytest.raises(ConfigError, match=r"^--student: the student was trained on"):
        v.models_fit("moons", (2,), 0, None, "--teacher", student)
    with pytest.raises(ConfigError, match=r"^--teacher: the teacher was trained on 'digits'"):
        v.models_fit("checkerboard", (2,), 0, dg, "--teacher", student)
    v.models_fit("checkerboard", (2,), 0, ck, "--teacher", student)


def test_gan_layers_out_of_range_are_refused_not_wrapped() -> None:
    from fewstep.distill.parts.discriminator import TeacherFeatureDiscriminator
    from fewstep.teachers.training import denoiser_from_config

    net = {"type": "resmlp", "data_shape": [2], "hidden": 16, "depth": 2, "emb": 8,
           "num_classes": 0}
    den = denoiser_from_config({"network": net})
    n = len(den.features(torch.zeros(1, 2), torch.ones(1)))
    dims = [16] * n
    TeacherFeatureDiscriminator(den, dims, [-n, n - 1])
    for bad in ([n], [-n - 1], [0, 99]):
        with pytest.raises(ConfigError, match=rf"^gan.layers: index {bad[-1]} is out of range: "
                                              rf"the teacher returns {n} feature maps"):
            TeacherFeatureDiscriminator(den, dims, bad)
    with pytest.raises(ConfigError, match=r"^gan.layers: must name at least one"):
        TeacherFeatureDiscriminator(den, dims, [])
