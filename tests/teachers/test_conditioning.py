"""fewstep.core.conditioning: cat, index, move and where for labels and PromptEmbeds (pooled)."""

from __future__ import annotations

import pytest
import torch

from fewstep.core.conditioning import PromptEmbeds, cat_cond, cond_to, index_cond, where_cond


def _pe(lengths: list[int], pooled: bool = True, seed: int = 0) -> PromptEmbeds:
    g = torch.Generator().manual_seed(seed)
    feats = [torch.randn(n, 4, generator=g) for n in lengths]
    return PromptEmbeds.from_list(feats, torch.randn(len(lengths), 3, generator=g)
                                  if pooled else None)


def test_prompt_embeds_cat_index_where_keep_rows():
    a, b = _pe([2, 5], seed=0), _pe([3], seed=1)
    both = cat_cond([a, b])
    assert len(both) == 3 and both.embeds.shape == (3, 5, 4)
    for i, (src, j) in enumerate([(a, 0), (a, 1), (b, 0)]):
        assert torch.equal(both.to_list()[i], src.to_list()[j])
        assert torch.equal(both.pooled[i], src.pooled[j])
    sub = index_cond(both, torch.tensor([2, 0]))
    assert torch.equal(sub.to_list()[0], b.to_list()[0]) and len(sub) == 2
    mixed = where_cond(torch.tensor([True, False]), a, _pe([1, 1], seed=2))
    assert torch.equal(mixed.to_list()[0], a.to_list()[0]) and mixed.to_list()[1].shape == (1, 4)
    moved = cond_to(a, "cpu", torch.bfloat16)
    assert moved.embeds.dtype == torch.bfloat16 and moved.mask.dtype == torch.bool
    with pytest.raises(ValueError, match="with and without pooled"):
        cat_cond([a, _pe([1], pooled=False)])


def test_host_lengths_follow_every_operation_and_spare_a_device_read():
    a, b = _pe([2, 5, 1], seed=0), _pe([3], seed=1)

    def true_lengths(pe: PromptEmbeds) -> tuple[int, ...]:
        return tuple(pe.mask.sum(1).tolist())

    results = {"from_list": a, "cat": cat_cond([a, b]), "int": a[1], "slice": a[1:],
               "host tensor": a[torch.tensor([2, 0])], "bool mask": a[torch.tensor([1, 0, 1]) > 0],
               "repeat": a.repeat(2), "repeat_interleave": a.repeat_interleave(2),
               "to": cond_to(a, "cpu", torch.bfloat16)}
    for name, pe in results.items():
        assert pe.lengths is not None and pe.lengths == true_lengths(pe), name
    assert a.repeat_interleave(2).lengths == (2, 2, 5, 5, 1, 1)
    # on an accelerator ("meta" stands in: it has no data to read) to_list uses the host lengths
    on_dev = a.to("meta")
    assert [t.shape[0] for t in on_dev.to_list()] == [2, 5, 1]
    assert on_dev[1:].lengths == (5, 1)
    # an index living on the device cannot be read without a sync: lengths are recomputed later
    assert on_dev[torch.tensor([0], device="meta")].lengths is None
    with pytest.raises(ValueError, match="lengths"):
        PromptEmbeds(a.embeds, a.mask, None, (1, 2))


def test_labels_and_none():
    labels = torch.tensor([1, 2, 3])
    assert torch.equal(cat_cond([labels, labels[:1]]), torch.tensor([1, 2, 3, 1]))
    assert torch.equal(where_cond(torch.tensor([True, False, True]), labels,
                                  torch.full_like(labels, 10)), torch.tensor([1, 10, 3]))
    assert cond_to(labels, "cpu", torch.float16).dtype == torch.long
    assert cat_cond([None, None]) is None and index_cond(None, 0) is None
    with pytest.raises(ValueError, match="conditioned and an unconditional"):
        cat_cond([labels, None])

