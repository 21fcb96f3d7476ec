"""Data, prompt and path inputs read exactly or refused (issue 24).

* images in every bit depth / mode read to the right range (16-bit PNG is not clipped);
* non-regular files (FIFOs) refused before they are opened (no hang);
* label values checked before anything sizes an array from them; uint64 labels printed as
  the user's value;
* text files that are not UTF-8 refused naming the file (and byte offset);
* an over-long path name is the input's fault (exit 2, not 3);
* ``data.seed=-1`` is a one-line error in every command.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import AS_LIMIT, assert_one_line, fewstep, ok, write_images


def _final_loss(r) -> float:
    return float(json.loads(r.stdout.strip().splitlines()[-1])["final_loss"])


# ------------------------------------------------------------------ image bit depths / modes
def _teacher_on(folder: Path, out: Path) -> float:
    """Final loss of 3 deterministic teacher steps on ``folder`` (same seed, same images =>
    same loss, whatever the file encoding)."""
    return _final_loss(ok(fewstep("teacher", "train", "--quiet", "--data", folder, "--out", out,
                                  "steps=3", timeout=240)))


@pytest.fixture(scope="module")
def grey8(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[np.ndarray], float]:
    d = tmp_path_factory.mktemp("grey8")
    arrays = write_images(d / "imgs", 24, seed=3)
    return d / "imgs", arrays, _teacher_on(d / "imgs", d / "t.safetensors")


def test_16bit_grey_png_is_not_clipped(grey8, tmp_path: Path) -> None:
    # the same images stored as 16-bit PNG (v * 257, exactly v / 255 of full scale): today
    # Pillow's I;16 -> RGB conversion clips every value above 255 to white (final loss 2.0
    # instead of 1.36 in the probe)
    from PIL import Image

    _folder, arrays, want = grey8
    (tmp_path / "imgs16").mkdir()
    for i, v in enumerate(arrays):
        Image.fromarray(v.astype(np.uint16) * 257).save(tmp_path / "imgs16" / f"{i:03d}.png")
    assert Image.open(tmp_path / "imgs16" / "000.png").mode.startswith("I;16")
    got = _teacher_on(tmp_path / "imgs16", tmp_path / "t16.safetensors")
    assert abs(got - want) <= 1e-3 * abs(want), f"16-bit read differs: loss {got} vs {want}"


def test_palette_png_reads_like_grey(grey8, tmp_path: Path) -> None:
    from PIL import Image

    _folder, arrays, want = grey8
    (tmp_path / "pal").mkdir()
    for i, v in enumerate(arrays):
        Image.fromarray(v).convert("P").save(tmp_path / "pal" / f"{i:03d}.png")
    got = _teacher_on(tmp_path / "pal", tmp_path / "tp.safetensors")
    assert abs(got - want) <= 1e-3 * abs(want)


def test_opaque_alpha_reads_like_grey(grey8, tmp_path: Path) -> None:
    # LA with alpha 255 everywhere: the stated alpha policy (composite over white) is a no-op
    from PIL import Image

    _folder, arrays, want = grey8
    (tmp_path / "la").mkdir()
    for i, v in enumerate(arrays):
        Image.fromarray(v).convert("LA").save(tmp_path / "la" / f"{i:03d}.png")
    got = _teacher_on(tmp_path / "la", tmp_path / "tla.safetensors")
    assert abs(got - want) <= 1e-3 * abs(want)


# ------------------------------------------------------------------ non-regular files
@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs")
def test_fifo_in_an_image_folder_is_refused(tmp_path: Path) -> None:
    write_images(tmp_path / "imgs", 24)
    os.mkfifo(tmp_path / "imgs" / "zz_fifo.png")
    r = fewstep("teacher", "train", "--quiet", "--data", tmp_path / "imgs", "--out",
                tmp_path / "t.safetensors", "steps=1", timeout=90)
    assert_one_line(r, 2, "zz_fifo.png")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs")
def test_fifo_as_array_file_is_refused(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "data.npy")
    r = fewstep("teacher", "train", "--quiet", "--data", tmp_path / "data.npy", "--out",
                tmp_path / "t.safetensors", "steps=1", timeout=90)
    assert_one_line(r, 2, "data.npy")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs")
def test_fifo_as_prompt_file_is_refused(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "prompts.txt")
    r = fewstep("plan", "data=prompts", "teacher.kind=zimage",
                "teacher.pretrained=Tongyi-MAI/Z-Image-Turbo", "teacher.resolution=64",
                f"teacher.prompts={tmp_path / 'prompts.txt'}", timeout=90,
                env={"HF_HUB_OFFLINE": "1"})
    assert_one_line(r, 2, "prompts.txt")


# ------------------------------------------------------------------ labels
def _npz(path: Path, labels: np.ndarray) -> Path:
    x = np.random.default_rng(0).integers(0, 256, (len(labels), 1, 8, 8), dtype=np.uint8)
    np.savez(path, x=x, y=labels)
    return path


def test_huge_label_is_refused_before_sizing(tmp_path: Path) -> None:
    # today: builds 10**9 class-name strings (no exit in 90 s; memory grows)
    data = _npz(tmp_path / "d.npz", np.array([0] * 19 + [10**9]))
    r = fewstep("teacher", "train", "--quiet", "--data", data, "--out",
                tmp_path / "t.safetensors", "steps=1", timeout=90, as_limit=AS_LIMIT)
    assert_one_line(r, 2, "1000000000")


def test_uint64_label_is_printed_as_written(tmp_path: Path) -> None:
    # today: "label -9223372036854775803 at index 19 is negative"
    data = _npz(tmp_path / "d.npz", np.array([0] * 19 + [2**63 + 5], dtype=np.uint64))
    r = fewstep("teacher", "train", "--quiet", "--data", data, "--out",
                tmp_path / "t.safetensors", "steps=1", as_limit=AS_LIMIT)
    assert_one_line(r, 2, str(2**63 + 5))
    assert "-9223372036854775803" not in r.stderr


# ------------------------------------------------------------------ text files
@pytest.mark.parametrize("content", [b"a caf\xe9 cr\xe8me\na dog\n", bytes(range(128, 192))],
                         ids=["latin1", "binary"])
def test_non_utf8_prompt_file_in_plan(tmp_path: Path, content: bytes) -> None:
    p = tmp_path / "prompts.txt"
    p.write_bytes(content)
    r = fewstep("plan", "data=prompts", "teacher.kind=zimage",
                "teacher.pretrained=Tongyi-MAI/Z-Image-Turbo", "teacher.resolution=64",
                f"teacher.prompts={p}", env={"HF_HUB_OFFLINE": "1"})
    assert_one_line(r, 2, "prompts.txt", "utf-8", "offset")


def test_non_utf8_prompt_file_in_distill(tmp_path: Path) -> None:
    # the prompt file is checked before the (here absent) weights are looked up
    p = tmp_path / "prompts.txt"
    p.write_bytes(b"a caf\xe9 cr\xe8me\n")
    r = fewstep("distill", "--quiet", "--out", tmp_path / "run", "data=prompts",
                "teacher.kind=zimage", "teacher.pretrained=Tongyi-MAI/Z-Image-Turbo",
                "teacher.resolution=64", f"teacher.prompts={p}",
                f"cache.dir={tmp_path / 'cache'}", env={"HF_HUB_OFFLINE": "1"})
    assert_one_line(r, 2, "prompts.txt", "utf-8")


# ------------------------------------------------------------------ paths and seeds
def test_overlong_output_name_is_an_input_error(tmp_path: Path) -> None:
    # today: exit 3 ("the OS refused a write"); ENAMETOOLONG is the name's fault
    r = fewstep("sample", "--data", "checkerboard", "--num", "10", "--out",
                tmp_path / ("x" * 300))
    assert_one_line(r, 2, "name")


def test_overlong_teacher_output_name_is_an_input_error(tmp_path: Path) -> None:
    r = fewstep("teacher", "train", "--quiet", "--data", "checkerboard", "--out",
                tmp_path / ("y" * 300 + ".safetensors"))
    assert_one_line(r, 2, "name")


def test_negative_data_seed_in_teacher_train(tmp_path: Path) -> None:
    # today: numpy ValueError traceback
    write_images(tmp_path / "imgs", 24)
    r = fewstep("teacher", "train", "--quiet", "--out", tmp_path / "t.safetensors",
                f"data={{path: {tmp_path / 'imgs'}, seed: -1}}", "steps=1")
    assert_one_line(r, 2, "data.seed")


def test_negative_data_seed_in_distill(tmp_path: Path) -> None:
    # today: "teacher.path: teacher file not found: .../teacher_{'path': ...}.safetensors"
    write_images(tmp_path / "imgs", 24)
    r = fewstep("distill", "--quiet", "--out", tmp_path / "run",
                f"data={{path: {tmp_path / 'imgs'}, seed: -1}}", "train.iterations=1")
    assert_one_line(r, 2, "data.seed")
    assert "{'path'" not in r.stderr


def test_valid_long_name_is_written(tmp_path: Path) -> None:
    # a 252-byte file name is valid (NAME_MAX 255) but today the temp name fewstep derives from
    # it (".<name>.<random>.tmp") is not: exit 3 "File name too long", and the
    # <stem>_samples/ folder is left behind
    out = tmp_path / ("n" * 240 + ".safetensors")
    r = fewstep("teacher", "train", "--quiet", "--out", out, "--data", "checkerboard",
                "steps=2", "network.hidden=64", "network.depth=2", "network.emb=32")
    assert r.rc == 0, r.brief()
    assert out.is_file()
