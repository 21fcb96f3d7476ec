"""Text-to-image figures: feature networks named by local path (a tiny random CLIP folder and a
tiny TorchScript "Inception", built offline), the CLIP score against torchmetrics' own
definition, diversity against a brute-force computation, and the collapse / saturation flags."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch
from torch import nn

from fewstep.errors import ConfigError
from fewstep.evaluation.feature_nets import weights_sha256
from fewstep.evaluation.features import FeatureSpace, named_feature_space
from fewstep.evaluation.t2i import clip_score, diversity, t2i_metrics, teacher_reference
from fewstep.testing.tiny_features import build_tiny_clip, build_tiny_torchscript

PROMPTS = ["a red cat", "a photo of a big blue dog", "the green tree"]


@pytest.fixture(scope="module")
def nets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("feature_nets")
    return {"clip": build_tiny_clip(root / "clip"),
            "torchscript": build_tiny_torchscript(root / "inception.pt")}


def _images(n: int, seed: int, size: int = 32) -> torch.Tensor:
    """Images on the 8-bit grid in [-1, 1] (what a decoder's PNG would hold)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, size, size), generator=g).float() / 127.5 - 1


def test_feature_networks_by_path_are_named(nets):
    clip = named_feature_space(f"clip:{nets['clip']}")
    ts = named_feature_space(f"torchscript:{nets['torchscript']}")
    assert clip.name.startswith(f"clip:{nets['clip']} (CLIPModel")
    assert f"sha256 {weights_sha256(nets['clip'])}" in clip.name
    assert ts.name == (f"torchscript:{nets['torchscript']} "
                       f"(sha256 {weights_sha256(nets['torchscript'])})")
    x = _images(5, 0, 24)
    assert clip.features(x).shape == (5, 16) and ts.features(x).shape == (5, 64)
    assert clip.text(PROMPTS).shape == (3, 16)
    assert ts.features(x[:, :1]).shape == (5, 64)  # one channel: repeated to RGB
    with pytest.raises(ConfigError, match="no text tower"):
        ts.text(PROMPTS)
    with pytest.raises(ConfigError, match="does not exist"):
        named_feature_space(f"clip:{nets['clip']}_missing")
    with pytest.raises(ConfigError, match="not a TorchScript file"):
        named_feature_space(f"torchscript:{nets['clip'] / 'config.json'}")


class _TensorFeatures(nn.Module):
    """transformers 5 returns model outputs from ``get_*_features``; torchmetrics 1.9 expects
    tensors: the pooled tensors, nothing else changed."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model, self.config = model, model.config

    def get_image_features(self, *a, **k):
        out = self.model.get_image_features(*a, **k)
        return getattr(out, "pooler_output", out)

    def get_text_features(self, *a, **k):
        out = self.model.get_text_features(*a, **k)
        return getattr(out, "pooler_output", out)


def test_clip_score_is_torchmetrics_clip_score(nets):
    from torchmetrics.functional.multimodal import clip_score as tm_clip_score
    from transformers import CLIPModel, CLIPProcessor

    model = CLIPModel.from_pretrained(nets["clip"], local_files_only=True).eval()
    proc = CLIPProcessor.from_pretrained(nets["clip"], local_files_only=True)
    x = _images(6, 1)  # at the processor's crop size: its resize changes nothing
    ids = torch.tensor([0, 0, 1, 1, 2, 2])
    ours = clip_score(named_feature_space(f"clip:{nets['clip']}"), x, PROMPTS, ids)
    pixels = ((x + 1) * 127.5).round().to(torch.uint8)  # what the processor takes
    theirs = float(tm_clip_score(list(pixels), [PROMPTS[i] for i in ids],
                                 model_name_or_path=lambda: (_TensorFeatures(model), proc)))
    assert ours == pytest.approx(theirs, abs=1e-3)


def test_diversity_is_the_mean_pairwise_cosine_distance():
    g = torch.Generator().manual_seed(0)
    f = torch.randn(9, 5, generator=g)
    ids = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2])
    want = []
    for p in range(3):
        rows = f[ids == p]
        want.append(sum(1 - float(torch.cosine_similarity(a, b, 0))
                        for a, b in itertools.combinations(rows, 2)) / 3)
    assert diversity(f, ids) == pytest.approx(sum(want) / 3, abs=1e-6)


def _reference(space: FeatureSpace, n_prompts: int = 4, seeds: int = 4):
    ids = torch.arange(n_prompts).repeat_interleave(seeds)
    same, other = _images(len(ids), 2), _images(len(ids), 3)
    return ids, same, teacher_reference(space, same, other, ids, [*PROMPTS, "a cat"])


def test_a_collapsed_student_is_flagged(nets):
    space = named_feature_space(f"torchscript:{nets['torchscript']}")
    ids, same, ref = _reference(space)
    healthy = t2i_metrics(_images(len(ids), 4), ref)
    collapsed = same[::4].repeat_interleave(4, 0)  # one image per prompt, whatever the seed
    flat = t2i_metrics(collapsed, ref)
    assert healthy["diversity_ratio"] > 0.5 and not any("collapse" in w
                                                        for w in healthy["warnings"])
    assert flat["diversity"] < 1e-6 and flat["diversity_ratio"] < 0.5
    assert any(w.startswith("diversity collapse") for w in flat["warnings"])
    assert flat["features"] == space.name and "clip_score" not in flat  # no text tower


def test_over_saturation_is_flagged_and_clip_named(nets):
    space = named_feature_space(f"clip:{nets['clip']}")
    _, same, ref = _reference(space)
    grey = same.mean(1, keepdim=True)
    vivid = (grey + 3 * (same - grey)).clamp(-1, 1)  # the same images, colours pushed out
    out = t2i_metrics(vivid, ref)
    assert out["saturation_ratio"] > 1.2
    assert any(w.startswith("saturation") and "over-saturated" in w for w in out["warnings"])
    assert out["clip"] == space.name and out["clip_score_teacher"] == ref.figures[
        "clip_score_teacher"]
    assert {"fid_t", "fid_t_teacher_floor", "diversity", "diversity_teacher"} <= set(out)
    with pytest.raises(ValueError, match="NaN"):
        t2i_metrics(vivid * float("nan"), ref)
