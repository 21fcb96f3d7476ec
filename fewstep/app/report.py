"""A self-contained ``report.html``: same-noise grids, loss curves and the metrics table."""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from torch import Tensor

from fewstep.utils.viz import save_panels

COLUMNS = ("fid", "fid_vs_teacher", "fd", "fd_vs_teacher", "precision", "recall", "density",
           "coverage", "class_accuracy", "swd", "swd_vs_teacher", "mode_coverage",
           "mse_vs_teacher", "nfe", "seconds_per_image")


def _img(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img src="data:image/png;base64,{data}" style="max-width:100%">'


def smooth(values: Sequence[float], weight: float = 0.9) -> list[float]:
    """Exponential moving average with TensorBoard's debiasing (``weight`` 0: the raw values):
    ``m_t = w m_{t-1} + (1 - w) v_t``, reported as ``m_t / (1 - w^t)``."""
    out, m = [], 0.0
    for t, v in enumerate(values, 1):
        m = weight * m + (1 - weight) * v
        out.append(m / (1 - weight**t))
    return out


def loss_figure(rows: Sequence[dict[str, float]], ncols: int = 4, weight: float = 0.9
                ) -> plt.Figure:
    """One panel per logged term in a grid of ``ncols`` columns sharing the step axis: the raw
    curve (faint) under its smoothed curve (:func:`smooth`)."""
    keys = sorted({k for r in rows for k in r if k != "step"})
    ncols = max(1, min(ncols, len(keys)))
    nrows = -(-len(keys) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.4 * ncols, 2.3 * nrows), sharex=True,
                             squeeze=False)
    for ax, k in zip(axes.flat, keys, strict=False):
        pts = [(r["step"], r[k]) for r in rows if r.get(k) is not None]  # null: skipped
        steps, vals = [p[0] for p in pts], [p[1] for p in pts]
        ax.plot(steps, vals, lw=0.7, alpha=0.3, color="C0")
        ax.plot(steps, smooth(vals, weight), lw=1.4, color="C0")
        ax.set_title(k, fontsize=9)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    for c in range(ncols):  # step labels under the lowest panel of each column
        last = axes[(len(keys) - 1 - c) // ncols, c] if c < len(keys) else None
        if last is not None:
            last.xaxis.set_tick_params(labelbottom=True)
            last.set_xlabel("step", fontsize=8)
    fig.suptitle(f"training losses (faint: raw; solid: smoothed, weight {weight:g})",
                 fontsize=10)
    fig.tight_layout()
    return fig


def plot_losses(history_path: Path, out: Path) -> bool:
    """Plot every logged loss term against the step (:func:`loss_figure`); ``False`` when
    there is no history."""
    if not history_path.exists():
        return False
    rows = [json.loads(line) for line in history_path.read_text(encoding="utf-8").splitlines()
            if line.strip()]
    if not rows or not any(k != "step" for r in rows for k in r):
        return False
    fig = loss_figure(rows)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return True


def metrics_table_html(metrics: dict[str, dict[str, float]]) -> str:
    cols = [c for c in COLUMNS if any(c in m for m in metrics.values())]
    head = "".join(f"<th>{c}</th>" for c in cols)
    body = ""
    for name, m in metrics.items():
        cells = "".join(f"<td>{m[c]:.4g}</td>" if c in m else "<td></td>" for c in cols)
        body += f"<tr><th>{html.escape(name)}</th>{cells}</tr>"
    return f"<table><tr><th>sampler</th>{head}</tr>{body}</table>"


def metrics_table_markdown(metrics: dict[str, dict[str, float]]) -> str:
    cols = [c for c in COLUMNS if any(c in m for m in metrics.values())]
    lines = ["| sampler | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for name, m in metrics.items():
        lines.append(f"| {name} | " + " | ".join(f"{m[c]:.4g}" if c in m else "" for c in cols)
                     + " |")
    return "\n".join(lines)


def write_report(out_dir: Path, metrics: dict[str, dict[str, float]],
                 samples: dict[str, Tensor], history: Path | None, title: str,
                 notes: Sequence[str] = ()) -> Path:
    """Write ``grid.png``, ``losses.png`` and ``report.html`` into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    names = list(samples)
    n = 100 if samples[names[0]].ndim > 2 else samples[names[0]].shape[0]
    save_panels(out_dir / "grid.png", [samples[k][:n] for k in names], names, nrow=10,
                scale=0.35)
    parts = [f"<h1>{html.escape(title)}</h1>"]
    parts += [f"<p>{html.escape(s)}</p>" for s in notes]
    spaces = sorted({str(m["feature_space"]) for m in metrics.values() if "feature_space" in m})
    fs_note = f"<p>feature_space: {html.escape(', '.join(spaces))}</p>" if spaces else ""
    parts.append("<h2>Metrics</h2>" + fs_note + metrics_table_html(metrics))
    parts.append("<h2>Samples from the same noise (column = class)</h2>"
                 + _img(out_dir / "grid.png"))
    if history is not None and plot_losses(history, out_dir / "losses.png"):
        parts.append("<h2>Training losses</h2>" + _img(out_dir / "losses.png"))
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto}"
             "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 8px;"
             "text-align:right;font-size:13px}")
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}"
            f"</title><style>{style}</style></head><body>{''.join(parts)}</body></html>")
    path = out_dir / "report.html"
    path.write_text(page)
    return path
