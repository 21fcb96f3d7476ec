"""The shipped digit classifier: accuracy, asset format, save/load, determinism."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open

from fewstep.evaluation.digits_classifier import (
    DEFAULT_ASSET,
    DigitsClassifier,
    accuracy,
    load_classifier,
    random_shift,
    read_classifier_metadata,
    save_classifier,
    train_classifier,
)


def test_shipped_asset_heldout_accuracy(classifier: DigitsClassifier, digits) -> None:
    assert DEFAULT_ASSET.is_file() and DEFAULT_ASSET.stat().st_size < 2_000_000
    acc = accuracy(classifier, digits["xte"], digits["yte"])
    assert acc >= 0.95
    record = read_classifier_metadata(DEFAULT_ASSET)["record"]
    assert abs(record["heldout_accuracy"] - acc) < 1e-4  # type: ignore[index]


def test_asset_metadata_is_json_config() -> None:
    with safe_open(str(DEFAULT_ASSET), framework="pt") as f:
        meta = f.metadata()
    cfg = json.loads(meta["config"])
    assert cfg["num_features"] == 64 and cfg["num_classes"] == 10


def test_features_shape_and_dtype_follow_model(classifier: DigitsClassifier, digits) -> None:
    x = digits["xte"][:7].double()  # input dtype is cast to the network's
    f = classifier.features(x)
    assert f.shape == (7, classifier.num_features) and f.dtype == torch.float32
    m64 = load_classifier(DEFAULT_ASSET).double()
    assert m64.features(digits["xte"][:7]).dtype == torch.float64
    torch.testing.assert_close(m64.features(x).float(), f, rtol=1e-4, atol=1e-4)


def test_save_load_roundtrip_atomic(tmp_path: Path, classifier: DigitsClassifier, digits) -> None:
    out = tmp_path / "sub" / "clf.safetensors"
    save_classifier(classifier, out, extra={"note": "x"})
    assert [p.name for p in out.parent.iterdir()] == ["clf.safetensors"]  # no temp left behind
    again = load_classifier(out)
    x = digits["xte"][:16]
    torch.testing.assert_close(again(x), classifier(x))
    assert read_classifier_metadata(out)["record"] == {"note": "x"}


def test_training_is_deterministic_given_seed() -> None:
    state = torch.random.get_rng_state()
    a, _ = train_classifier(seed=3, steps=8)
    b, _ = train_classifier(seed=3, steps=8)
    c, _ = train_classifier(seed=4, steps=8)
    assert torch.equal(state, torch.random.get_rng_state())  # global RNG untouched
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(va, vb), k
    assert not torch.equal(a.head.weight, c.head.weight)


def test_random_shift_is_a_background_filled_translation() -> None:
    x = torch.rand(64, 1, 8, 8) * 2 - 1
    y = random_shift(x, 1, torch.Generator().manual_seed(0))
    pad = torch.nn.functional.pad(x, (1, 1, 1, 1), value=-1.0)
    seen = set()
    for i in range(len(x)):
        hits = [(dy, dx) for dy in range(3) for dx in range(3)
                if torch.equal(y[i], pad[i, :, dy:dy + 8, dx:dx + 8])]
        assert len(hits) == 1
        seen.add(hits[0])
    assert len(seen) == 9
