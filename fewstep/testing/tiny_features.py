"""Tiny, randomly initialised feature networks saved to disk, built offline in code: the
stand-ins for a user's CLIP folder (``clip:FOLDER``) and TorchScript FID Inception
(``torchscript:FILE``) in tests and smoke runs. Values computed in them mean nothing beyond
the plumbing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

#: whole-word tokens of the tiny CLIP tokenizer (other words are spelled out in bytes)
CLIP_WORDS = ("a", "photo", "of", "the", "cat", "dog", "car", "red", "blue", "green", "house",
              "tree", "bird", "on", "in", "with", "and", "small", "big", "painting", "picture",
              "yellow", "black", "white", "flower")


def build_tiny_clip(folder: str | Path, seed: int = 0, image_size: int = 32) -> Path:
    """A CLIP folder (``CLIPModel`` + ``CLIPProcessor``, ~61 k parameters) that
    ``from_pretrained(folder, local_files_only=True)`` loads. The tokenizer is a byte-level
    BPE whose merges spell :data:`CLIP_WORDS` as single tokens."""
    from tokenizers import pre_tokenizers
    from transformers import (
        CLIPConfig,
        CLIPImageProcessor,
        CLIPModel,
        CLIPProcessor,
        CLIPTokenizer,
    )

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    chars = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab_list = chars + [c + "</w>" for c in chars]
    merges: list[tuple[str, str]] = []
    for w in CLIP_WORDS:  # merge each word left to right into one token
        cur = w[0]
        for i, ch in enumerate(w[1:], 1):
            nxt = ch + "</w>" if i == len(w) - 1 else ch
            merges.append((cur, nxt))
            cur += nxt
            vocab_list.append(cur)
    vocab_list += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {t: i for i, t in enumerate(dict.fromkeys(vocab_list))}
    # the tokenizers backend takes (left, right) pairs; transformers types merges as strings
    pairs: Any = list(dict.fromkeys(merges))
    tok = CLIPTokenizer(vocab=vocab, merges=pairs, model_max_length=16)
    proc = CLIPProcessor(image_processor=CLIPImageProcessor(
        size={"shortest_edge": image_size},
        crop_size={"height": image_size, "width": image_size}), tokenizer=tok)
    cfg = CLIPConfig(
        text_config={"vocab_size": len(vocab), "hidden_size": 32, "intermediate_size": 64,
                     "num_hidden_layers": 2, "num_attention_heads": 4,
                     "max_position_embeddings": 16, "bos_token_id": vocab["<|startoftext|>"],
                     "eos_token_id": vocab["<|endoftext|>"],
                     "pad_token_id": vocab["<|endoftext|>"]},
        vision_config={"image_size": image_size, "patch_size": 8, "hidden_size": 32,
                       "intermediate_size": 64, "num_hidden_layers": 2,
                       "num_attention_heads": 4},
        projection_dim=16)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIPModel(cfg).eval()
    model.save_pretrained(folder)
    proc.save_pretrained(folder)
    return folder


class TinyInceptionLike(nn.Module):
    """``(N, 3, H, W)`` images in [0, 255] -> ``(N, 64)`` pooled conv features (the calling
    convention of the TorchScript FID Inception, which resizes its input itself)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.ReLU(), nn.Conv2d(16, 32, 3, 2, 1),
                                  nn.ReLU(), nn.Conv2d(32, 64, 3, 2, 1), nn.ReLU())

    def forward(self, x: Tensor) -> Tensor:
        x = nn.functional.interpolate(x / 127.5 - 1, size=(64, 64), mode="bilinear",
                                      align_corners=False)
        return self.body(x).mean((2, 3))


def build_tiny_torchscript(file: str | Path, seed: int = 0) -> Path:
    """:class:`TinyInceptionLike` saved with ``torch.jit.script(...).save(file)``."""
    file = Path(file)
    file.parent.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = TinyInceptionLike().eval()
    torch.jit.script(net).save(str(file))
    return file


__all__ = ["CLIP_WORDS", "TinyInceptionLike", "build_tiny_clip", "build_tiny_torchscript"]
