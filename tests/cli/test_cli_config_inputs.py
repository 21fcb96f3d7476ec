"""Configs and overrides read exactly or refused (issue 24, "Inputs read exactly or refused").

YAML: a duplicated key is an error (not "last one wins"); aliases beyond a small budget and
nesting beyond a sane depth are refused before anything walks the expanded tree; booleans are
not integers. Every case must end in one ``error:`` line, exit 2, within the CLI timeout.
"""

from __future__ import annotations

from pathlib import Path

from cli_helpers import assert_one_line, fewstep


def _bomb_lines(levels: int = 9, width: int = 9) -> list[str]:
    """Billion laughs: ``width ** (levels + 1)`` leaves from ~400 bytes of YAML."""
    lines = ['a0: &a0 [' + ",".join(['"x"'] * width) + ']']
    for i in range(1, levels + 1):
        lines.append(f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * width) + "]")
    return lines


def _flow_bomb(levels: int = 9, width: int = 9) -> str:
    s = "[&a0 [" + ",".join(["x"] * width) + "]"
    for i in range(1, levels + 1):
        s += f", &a{i} [" + ",".join([f"*a{i - 1}"] * width) + "]"
    return s + "]"


def test_duplicate_section_is_refused(tmp_path: Path) -> None:
    # the first train: section (batch_size 0, invalid) is silently dropped today: rc 0
    cfg = tmp_path / "dup.yaml"
    cfg.write_text("data: checkerboard\ntrain:\n  batch_size: 0\nmethod: turbo_pp\n"
                   "train:\n  iterations: 3\n")
    assert_one_line(fewstep("plan", "--config", cfg), 2, "train", "dup")


def test_duplicate_key_inside_a_section_is_refused(tmp_path: Path) -> None:
    cfg = tmp_path / "dup2.yaml"
    cfg.write_text("data: checkerboard\ntrain:\n  lr: 0.1\n  lr: 0.0001\n")
    assert_one_line(fewstep("plan", "--config", cfg), 2, "lr")


def test_alias_bomb_in_a_config_file_is_refused_fast(tmp_path: Path) -> None:
    # today: no exit within the timeout (pydantic + the error's repr walk 9**10 leaves)
    cfg = tmp_path / "bomb.yaml"
    cfg.write_text("\n".join(_bomb_lines()) + "\ndata: checkerboard\n")
    assert_one_line(fewstep("plan", "--config", cfg, timeout=90), 2, "alias")


def test_alias_bomb_in_an_override_is_refused_fast() -> None:
    r = fewstep("plan", "data=checkerboard", f"train.iterations={_flow_bomb()}", timeout=90)
    assert_one_line(r, 2, "train.iterations")


def test_alias_bomb_in_teacher_config_is_refused_fast(tmp_path: Path) -> None:
    cfg = tmp_path / "tbomb.yaml"
    cfg.write_text("data: checkerboard\n" + "\n".join(_bomb_lines()) + "\n")
    r = fewstep("teacher", "train", "--quiet", "--out", tmp_path / "t.safetensors", "--config",
                cfg, timeout=90)
    assert_one_line(r, 2, "alias")


def test_deeply_nested_override_value_is_one_line() -> None:
    # today: RecursionError traceback from the YAML parser (parse_override does not catch it)
    r = fewstep("plan", "data=checkerboard", "train.lr=" + "[" * 3000 + "]" * 3000)
    assert_one_line(r, 2, "train.lr")


def test_deeply_nested_data_option_is_one_line(tmp_path: Path) -> None:
    r = fewstep("teacher", "train", "--quiet", "--out", tmp_path / "t.safetensors", "--data",
                "{path: " + "[" * 3000 + "]" * 3000 + "}")
    assert_one_line(r, 2, "data")


def test_deep_block_nesting_in_a_file_is_one_line(tmp_path: Path) -> None:
    # guard (passes today: load_yaml catches RecursionError): 400 levels of block mappings
    cfg = tmp_path / "deep.yaml"
    cfg.write_text("data: checkerboard\n" + "".join("  " * i + f"k{i}:\n" for i in range(400))
                   + "  " * 400 + "v: 1\n")
    assert_one_line(fewstep("plan", "--config", cfg), 2)


def test_bool_is_not_an_integer() -> None:
    # today: train.iterations=yes is read as True == 1 iteration, rc 0
    assert_one_line(fewstep("plan", "data=checkerboard", "train.iterations=yes"), 2,
                    "train.iterations")


def test_bool_is_not_an_integer_in_a_file(tmp_path: Path) -> None:
    cfg = tmp_path / "b.yaml"
    cfg.write_text("data: checkerboard\ntrain: {batch_size: true}\n")
    assert_one_line(fewstep("plan", "--config", cfg), 2, "train.batch_size")


def test_bool_is_not_a_seed(tmp_path: Path) -> None:
    r = fewstep("teacher", "train", "--quiet", "--out", tmp_path / "t.safetensors", "--data",
                "checkerboard", "seed=on", "steps=1")
    assert_one_line(r, 2, "seed")
