"""The report's loss panels: a grid sharing the step axis, a smoothed curve over the raw one."""

from __future__ import annotations

import json

import matplotlib.pyplot as plt
import pytest

from fewstep.app.report import loss_figure, plot_losses, smooth


def test_smoothing_is_tensorboards_debiased_ema():
    vals = [4.0, 2.0, 3.0, 1.0]
    w = 0.6
    m, want = 0.0, []
    for t, v in enumerate(vals, 1):  # TensorBoard's scalar smoothing, written out
        m = w * m + (1 - w) * v
        want.append(m / (1 - w ** t))
    assert smooth(vals, w) == pytest.approx(want)
    assert smooth(vals, 0.0) == vals and smooth([5.0], 0.9) == pytest.approx([5.0])


def test_loss_panels_in_a_grid_with_one_step_axis(tmp_path):
    keys = [f"term{i}" for i in range(9)]
    rows = [{"step": s, **{k: float(s * (i + 1)) for i, k in enumerate(keys)}}
            for s in range(1, 41)]
    fig = loss_figure(rows)
    axes = fig.axes
    assert len(axes) == 12  # 3 rows x 4 columns, the last three blank
    shown = [a for a in axes if a.get_title()]
    assert [a.get_title() for a in shown] == sorted(keys)
    assert all(a.get_shared_x_axes().joined(shown[0], a) for a in shown)
    raw, smoothed = shown[2].get_lines()
    assert list(raw.get_ydata()) == [r["term2"] for r in rows]
    assert list(smoothed.get_ydata()) == pytest.approx(smooth([r["term2"] for r in rows]))
    assert raw.get_alpha() < 1.0 and smoothed.get_linewidth() > raw.get_linewidth()
    plt.close(fig)
    hist = tmp_path / "losses.jsonl"
    hist.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert plot_losses(hist, tmp_path / "losses.png") and (tmp_path / "losses.png").is_file()
    assert not plot_losses(tmp_path / "missing.jsonl", tmp_path / "x.png")
