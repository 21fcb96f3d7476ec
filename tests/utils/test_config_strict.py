"""YAML and config values are read exactly or refused (fewstep.utils.config_files)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from fewstep.errors import ConfigError
from fewstep.utils.config_files import MAX_YAML_NODES, load_yaml, parse_override, yaml_load


def _bomb(levels: int = 9, width: int = 9) -> str:
    lines = ["a0: &a0 [" + ",".join(['"x"'] * width) + "]"]
    lines += [f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * width) + "]"
              for i in range(1, levels + 1)]
    return "\n".join(lines)


def test_duplicate_keys_are_refused_naming_both_lines() -> None:
    with pytest.raises(yaml.YAMLError, match=r"duplicate key 'train' at line 4 \(first at line 2"):
        yaml_load("data: x\ntrain:\n  lr: 1\ntrain:\n  lr: 2\n")
    with pytest.raises(yaml.YAMLError, match="duplicate key 'lr'"):
        yaml_load("train:\n  lr: 1\n  lr: 2\n")


def test_an_alias_bomb_is_refused_while_parsed() -> None:
    with pytest.raises(yaml.YAMLError, match="alias"):
        yaml_load(_bomb())  # 9**10 leaves written in 400 bytes
    with pytest.raises(ConfigError, match=r"train\.iterations"):
        parse_override("train.iterations=[&a [x,x,x,x,x,x,x,x,x,x], &b [*a,*a,*a,*a,*a,*a,*a,"
                       "*a,*a,*a], &c [*b,*b,*b,*b,*b,*b,*b,*b,*b,*b], &d [*c,*c,*c,*c,*c,*c,"
                       "*c,*c,*c,*c], &e [*d,*d,*d,*d,*d,*d,*d,*d,*d,*d], [*e,*e]]")


def test_ordinary_aliases_and_merge_keys_still_load() -> None:
    got = yaml_load("base: &b {x: 1, y: 2}\nc:\n  <<: *b\n  y: 3\nd: *b\n")
    assert got == {"base": {"x": 1, "y": 2}, "c": {"x": 1, "y": 3}, "d": {"x": 1, "y": 2}}
    reuse = "v: &v [" + ",".join(["1"] * 100) + "]\n" + "\n".join(
        f"k{i}: *v" for i in range(MAX_YAML_NODES // 200))
    assert len(yaml_load(reuse)) == 1 + MAX_YAML_NODES // 200


def test_deep_nesting_is_one_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"train\.lr.*nested deeper"):
        parse_override("train.lr=" + "[" * 3000 + "]" * 3000)
    f = tmp_path / "deep.yaml"
    f.write_text("data: x\n" + "".join("  " * i + f"k{i}:\n" for i in range(400)) +
                 "  " * 400 + "v: 1\n")
    with pytest.raises(ConfigError, match="nested deeper"):
        load_yaml(f)


def test_booleans_are_not_numbers() -> None:
    from fewstep.distill.config import DistillConfig
    from fewstep.utils.config_files import load_config

    for item in ("train.iterations=yes", "train.lr=true", "train.seed=on",
                 "student.sigmas=[1.0, true]"):
        with pytest.raises(ConfigError, match="boolean is not a number"):
            load_config(DistillConfig, None, ["data=checkerboard", item])
    cfg = load_config(DistillConfig, None, ["data=checkerboard", "train.lr=1"])
    assert cfg.train.lr == 1.0  # an int is still a float


def test_a_non_utf8_text_file_names_the_byte_offset(tmp_path: Path) -> None:
    from fewstep.data.prompts import read_prompts

    f = tmp_path / "prompts.txt"
    f.write_bytes(b"a caf\xe9\n")
    with pytest.raises(ConfigError, match=r"teacher.prompts: .*prompts.txt is not UTF-8 text "
                                          r"\(byte 0xe9 at offset 5\)"):
        read_prompts(f)
