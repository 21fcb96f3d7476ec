"""Sharded, checksummed prompt-embedding cache: build, reuse, repair, invalidate."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from fewstep.teachers.diffusers.conditioning_cache import module_fingerprint, tokenizer_fingerprint
from fewstep.teachers.diffusers.prompt_cache import PromptCache
from fewstep.testing.tiny_pipelines import TINY_MAX_SEQ

PROMPTS = ["a red cat", "a blue dog", "", "a photo of a tree", "two small birds", "a big house"]


def pipeline_encode_fn(pipe):
    """The pipeline's own ``encode_prompt`` (no CFG branch): a list of ``(L_i, D)``."""
    def fn(prompts):
        with torch.no_grad():
            embeds, _ = pipe.encode_prompt(prompts, device="cpu", do_classifier_free_guidance=False,
                                           max_sequence_length=TINY_MAX_SEQ)
        return list(embeds)
    return fn


def encoder_fingerprint(pipe, max_sequence_length):
    return (f"{module_fingerprint(pipe.text_encoder)}|{tokenizer_fingerprint(pipe.tokenizer)}"
            f"|{max_sequence_length}")


class Counting:
    def __init__(self, fn):
        self.fn, self.calls, self.prompts = fn, 0, 0

    def __call__(self, prompts):
        self.calls += 1
        self.prompts += len(prompts)
        return self.fn(prompts)


@pytest.fixture
def setup(tiny_pipe, tmp_path):
    pf = tmp_path / "prompts.txt"
    pf.write_text("\n".join(PROMPTS) + "\n", encoding="utf-8")
    enc = Counting(pipeline_encode_fn(tiny_pipe))
    fp = encoder_fingerprint(tiny_pipe, TINY_MAX_SEQ)
    return pf, tmp_path / "cache", enc, fp


def test_build_reuse_and_values(tiny_pipe, setup):
    pf, cdir, enc, fp = setup
    cache = PromptCache(cdir, pf, enc, fp, shard_size=2, batch_size=2)
    assert len(cache) == 5  # blank line skipped
    assert sorted(cache.regenerated) == ["null.safetensors", "shard_00000.safetensors",
                                         "shard_00001.safetensors", "shard_00002.safetensors"]
    direct, _ = tiny_pipe.encode_prompt(["a photo of a tree", ""], device="cpu",
                                        do_classifier_free_guidance=False,
                                        max_sequence_length=TINY_MAX_SEQ)
    torch.testing.assert_close(cache.embedding(2), direct[0])
    torch.testing.assert_close(cache.null_embeds, direct[1])
    batch = cache.get([4, 0])
    assert len(batch) == 2 and torch.equal(batch.to_list()[1], cache.embedding(0))
    assert len(cache.null(3)) == 3
    # second run: nothing re-encoded
    enc2 = Counting(enc.fn)
    again = PromptCache(cdir, pf, enc2, fp, shard_size=2)
    assert again.regenerated == [] and enc2.calls == 0
    torch.testing.assert_close(again.embedding(4), cache.embedding(4))
    # read-only reuse works without an encoder
    ro = PromptCache(cdir, pf, None, fp, shard_size=2)
    torch.testing.assert_close(ro.embedding(1), cache.embedding(1))
    meta = json.loads((cdir / "manifest.json").read_text())
    assert meta["fingerprint"] == fp and meta["num_prompts"] == 5


def test_shards_are_memory_mapped_not_loaded(setup):
    """Verified shards are used in place (mapped from their files), including ones written in
    this session, and their values are the encoder's."""
    maps = Path("/proc/self/maps")
    if not maps.is_file():
        pytest.skip("needs /proc/self/maps (Linux)")
    pf, cdir, enc, fp = setup
    built = PromptCache(cdir, pf, enc, fp, shard_size=2)  # every shard written now
    reopened = PromptCache(cdir, pf, None, fp, shard_size=2)
    mapped = maps.read_text()
    for name in ["null.safetensors", *built.shard_names()]:
        assert str((cdir / name).resolve()) in mapped, name
    for i in range(len(built)):
        torch.testing.assert_close(reopened.embedding(i), enc.fn([built.prompts[i]])[0])


def test_corrupted_shards_are_regenerated(setup):
    pf, cdir, enc, fp = setup
    ref = PromptCache(cdir, pf, enc, fp, shard_size=2)
    want = [ref.embedding(i).clone() for i in range(len(ref))]
    # flip one byte of tensor data (at the end of the file): checksum must catch it
    path = cdir / "shard_00001.safetensors"
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF
    path.write_bytes(bytes(data))
    (cdir / "shard_00002.safetensors").write_bytes(b"truncated")  # unreadable file
    enc2 = Counting(enc.fn)
    fixed = PromptCache(cdir, pf, enc2, fp, shard_size=2)
    assert sorted(fixed.regenerated) == ["shard_00001.safetensors", "shard_00002.safetensors"]
    assert enc2.prompts == 3  # only the prompts of the two bad shards
    for i, w in enumerate(want):
        torch.testing.assert_close(fixed.embedding(i), w)
    # lazy mode: a shard corrupted after opening is caught at first use
    lazy = PromptCache(cdir, pf, enc, fp, shard_size=2, verify_on_open=False)
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x0F
    path.write_bytes(bytes(data))
    torch.testing.assert_close(lazy.embedding(2), want[2])
    assert lazy.regenerated == ["shard_00001.safetensors"]
    # a corrupt shard with no encoder is an error, never silently used
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x0F
    path.write_bytes(bytes(data))
    with pytest.raises(RuntimeError, match="no encode_fn"):
        PromptCache(cdir, pf, None, fp, shard_size=2)


def test_cache_invalidated_by_encoder_or_prompt_change(setup):
    pf, cdir, enc, fp = setup
    PromptCache(cdir, pf, enc, fp, shard_size=2)
    other = PromptCache(cdir, pf, enc, "another-encoder", shard_size=2)
    assert len(other.regenerated) == 4
    pf.write_text("a red cat\nsomething new\n", encoding="utf-8")
    changed = PromptCache(cdir, pf, enc, "another-encoder", shard_size=2)
    assert len(changed.regenerated) == 2 and len(changed) == 2
    assert not (cdir / "shard_00002.safetensors").exists()


def test_fingerprint_tracks_weights(tiny_pipe):
    fp = encoder_fingerprint(tiny_pipe, TINY_MAX_SEQ)
    assert fp == encoder_fingerprint(tiny_pipe, TINY_MAX_SEQ)
    assert fp != encoder_fingerprint(tiny_pipe, 32)
    p = next(tiny_pipe.text_encoder.parameters())
    with torch.no_grad():
        p.view(-1)[0] += 1.0
        try:
            assert fp != encoder_fingerprint(tiny_pipe, TINY_MAX_SEQ)
        finally:
            p.view(-1)[0] -= 1.0


def test_fingerprint_covers_the_second_text_encoder():
    """A Flux pipeline whose T5 (text_encoder_2) is replaced gets another conditioning-cache
    key (issue 24: the old prompt embeddings were served). The key is the package's own
    (:func:`~fewstep.teachers.diffusers.conditioning_cache.cache_key`), from a real reading."""
    from fewstep.teachers.diffusers.conditioning_cache import cache_key
    from fewstep.teachers.diffusers.pipeline_reading import read_pipeline
    from fewstep.testing.tiny_pipelines import build_tiny_flux_pipeline

    pipe = build_tiny_flux_pipeline(seed=0)
    reading = read_pipeline(pipe, 16, 16, 2)
    key, _ = cache_key(pipe, reading.spec, reading.call_kwargs, torch.float32)
    other = build_tiny_flux_pipeline(seed=1).text_encoder_2
    assert type(other) is type(pipe.text_encoder_2)
    pipe.text_encoder_2 = other
    assert key != cache_key(pipe, reading.spec, reading.call_kwargs, torch.float32)[0]
