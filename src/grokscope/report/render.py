"""Draw a `figures.Figure` two ways: an interactive plotly figure (zoom, hover, a log/linear toggle)
for the HTML page, and a static matplotlib PNG (Agg backend: no display, no browser).

Both read the same `Figure`, so the page and the PNG show the same numbers. No text from the user
reaches a figure: titles and labels are fixed strings, tick labels are numbers or Fourier names.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from grokscope.report.base import Figure, Heatmap, phase_colour

SEQ_SCALE, DIV_SCALE = "Viridis", "RdBu_r"  # diverging: red positive, blue negative, as in the PNGs
# matplotlib's default cycle, so a curve has the same colour on the page and in its PNG
COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"]


def _f32(a: np.ndarray) -> np.ndarray:
    """float32 for the page: a quarter of the size of float64 text, plenty for a picture."""
    a = np.asarray(a)
    return a.astype(np.float32) if a.dtype.kind in "fiu" else a


# ------------------------------------------------------------------------------------ plotly
def to_plotly(fig: Figure):
    """The interactive figure (a plotly `go.Figure`)."""
    import plotly.graph_objects as go

    if fig.kind == "heatmaps":
        return _plotly_heatmaps(fig)
    out = go.Figure()
    for s in fig.series:
        visible = "legendonly" if s.hidden else True
        if fig.kind == "lines":
            out.add_trace(go.Scatter(x=_f32(s.x), y=_f32(s.y), name=s.name, mode="lines", visible=visible,
                                     line={"dash": "dash" if s.dash else "solid"}))
        elif fig.kind == "bars":
            out.add_trace(go.Bar(x=list(map(str, s.x)), y=_f32(s.y), name=s.name, visible=visible))
        elif fig.kind == "hist":
            bins = ({"start": fig.x_range[0], "end": fig.x_range[1], "size": (fig.x_range[1] - fig.x_range[0]) / 40}
                    if fig.x_range else None)
            out.add_trace(go.Histogram(x=_f32(s.y), name=s.name, nbinsx=40, xbins=bins, visible=visible))
    for name, (x0, x1) in fig.phases.items():
        out.add_vrect(x0=x0, x1=x1, fillcolor=phase_colour(name), opacity=0.35, layer="below", line_width=0,
                      annotation_text=name.replace("_", " "), annotation_position="top left",
                      annotation_font_size=10)
    for x, label in fig.vlines:
        out.add_vline(x=x, line_dash="dot", line_color="#444", annotation_text=label, annotation_position="top")
    if fig.x_range:
        out.update_xaxes(range=list(fig.x_range))
    if fig.kind == "bars" and fig.series:
        out.update_xaxes(**_plotly_category_ticks([str(x) for x in fig.series[0].x], most=40))
    out.update_yaxes(exponentformat="power")
    out.update_layout(colorway=COLOURS,
        xaxis_title=fig.x_label, yaxis_title=fig.y_label, yaxis_type="log" if fig.log_y else "linear",
        barmode="stack" if fig.kind == "bars" and len(fig.series) > 1 else None,
        hovermode="x unified" if fig.kind == "lines" else "closest", height=420,
        margin={"l": 60, "r": 20, "t": 40, "b": 50}, legend={"orientation": "h", "y": -0.18},
        template="plotly_white")
    if fig.toggle_log:
        out.update_layout(updatemenus=[{
            "type": "buttons", "direction": "left", "x": 1.0, "xanchor": "right", "y": 1.12, "yanchor": "top",
            "showactive": True, "active": 0 if fig.log_y else 1, "pad": {"r": 0, "t": 0},
            "buttons": [{"label": "log y", "method": "relayout", "args": [{"yaxis.type": "log"}]},
                        {"label": "linear y", "method": "relayout", "args": [{"yaxis.type": "linear"}]}],
        }])
    return out


def _grid(n: int) -> tuple[int, int]:
    cols = min(n, 4)
    return math.ceil(n / cols), cols


def _plotly_heatmaps(fig: Figure):
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    rows, cols = _grid(len(fig.heatmaps))
    out = make_subplots(rows=rows, cols=cols, subplot_titles=[h.title for h in fig.heatmaps],
                        horizontal_spacing=0.06, vertical_spacing=0.12 if rows > 1 else 0.05)
    for i, h in enumerate(fig.heatmaps):
        r, c = i // cols + 1, i % cols + 1
        out.add_trace(go.Heatmap(z=_f32(h.z), x=_labels(h.x), y=_labels(h.y), showscale=len(fig.heatmaps) == 1,
                                 colorscale=DIV_SCALE if h.diverging else SEQ_SCALE,
                                 zmid=0 if h.diverging else None, name=h.title,
                                 hovertemplate=f"{fig.y_label} %{{y}}<br>{fig.x_label} %{{x}}<br>%{{z:.4g}}<extra></extra>"),
                      row=r, col=c)
        out.update_yaxes(autorange="reversed", row=r, col=c, **_plotly_category_ticks(list(_labels(h.y))))
        out.update_xaxes(row=r, col=c, **_plotly_category_ticks(list(_labels(h.x))))  # row 0 on top (above)
        out.update_xaxes(title_text=fig.x_label if r == rows else None, row=r, col=c)
        out.update_yaxes(title_text=fig.y_label if c == 1 else None, row=r, col=c)
    side = 560 if len(fig.heatmaps) == 1 else 300
    out.update_layout(height=side * rows + 80, margin={"l": 60, "r": 20, "t": 50, "b": 50},
                      template="plotly_white")
    return out


def _labels(v) -> list:
    return [str(x) for x in v] if len(v) and isinstance(v[0], str | np.str_) else _f32(np.asarray(v))


# ------------------------------------------------------------------------------------ matplotlib
def to_png(fig: Figure, path: Path) -> Path:
    """The static figure as a PNG (written atomically)."""
    import matplotlib

    matplotlib.use("Agg")  # no display: reports are built on servers and in CI
    import matplotlib.pyplot as plt

    from grokscope.store import atomic_write_bytes

    if fig.kind == "heatmaps":
        mfig = _mpl_heatmaps(fig, plt)
    else:
        mfig, ax = plt.subplots(figsize=(8, 4.2), dpi=100)
        _mpl_axes(fig, ax)
    mfig.suptitle(fig.title, fontsize=11)
    mfig.tight_layout()
    import io

    buf = io.BytesIO()
    mfig.savefig(buf, format="png")
    plt.close(mfig)
    atomic_write_bytes(path, buf.getvalue())
    return path


def _mpl_axes(fig: Figure, ax) -> None:
    for name, (x0, x1) in fig.phases.items():
        ax.axvspan(x0, x1, color=phase_colour(name), alpha=0.4, lw=0, label=name.replace("_", " "))
    if fig.kind == "lines":
        for s in fig.series:
            if s.hidden:  # the PNG shows what the interactive figure shows at first
                continue
            ax.plot(s.x, s.y, ls="--" if s.dash else "-", lw=1.2, label=s.name)
    elif fig.kind == "bars":
        bottom = np.zeros(len(fig.series[0].y)) if fig.series else None
        pos = np.arange(len(fig.series[0].x)) if fig.series else None
        for s in fig.series:
            ax.bar(pos, s.y, bottom=bottom, label=s.name, width=0.8)
            bottom = bottom + np.nan_to_num(np.asarray(s.y, dtype=float))
        if fig.series:
            _sparse_ticks(ax.set_xticks, ax.set_xticklabels, list(map(str, fig.series[0].x)))
    elif fig.kind == "hist":
        for s in fig.series:
            ax.hist(np.asarray(s.y, dtype=float)[np.isfinite(s.y)], bins=40, range=fig.x_range, label=s.name)
    if fig.x_range:
        ax.set_xlim(*fig.x_range)
    lo, hi = ax.get_xlim()
    placed: list[tuple[float, int]] = []
    for x, label in sorted(fig.vlines):
        ax.axvline(x, ls=":", color="#444", lw=1)
        row = 0  # labels closer than ~8% of the axis would print over each other: stack them
        while any(abs(x - px) < 0.08 * (hi - lo) and pr == row for px, pr in placed):
            row += 1
        placed.append((x, row))
        ax.annotate(label, (x, 1), xycoords=("data", "axes fraction"), xytext=(0, 1 + 9 * row),
                    textcoords="offset points", ha="center", va="bottom", fontsize=8)
    ys = [np.asarray(s.y, dtype=float) for s in fig.series if not s.hidden]
    positive = all(np.all(y[np.isfinite(y)] > 0) for y in ys) and any(np.isfinite(y).any() for y in ys)
    if fig.log_y and positive:
        ax.set_yscale("log")
    ax.set_xlabel(fig.x_label)
    ax.set_ylabel(fig.y_label)
    ax.grid(alpha=0.3)
    if len(fig.series) > 1 or fig.phases:
        ax.legend(fontsize=8, ncol=2)


def tick_subset(labels: list[str], most: int) -> list[int]:
    """Which labels to print on a crowded axis. On a Fourier axis (const, cos 1, sin 1, ...) the
    ticks sit on `cos k` for round k (1, 2, 5, 10, ... apart), so they never show only sines."""
    n = len(labels)
    if n <= most:
        return list(range(n))
    if n > 2 and labels[0] == "const" and labels[1] == "cos 1":
        n_freq = (n - 1) // 2
        step = next(s for s in (1, 2, 5, 10, 20, 25, 50, 100, 200, 500, 1000) if n_freq / s <= most - 1 or s == 1000)
        return [0] + [2 * k - 1 for k in range(step, n_freq + 1, step)]
    every = math.ceil(n / most)
    return list(range(0, n, every))


def _sparse_ticks(set_ticks, set_labels, labels: list[str], most: int = 20) -> None:
    idx = tick_subset(labels, most)
    set_ticks(idx)
    set_labels([labels[i] for i in idx], rotation=90, fontsize=7)


def _plotly_category_ticks(labels: list[str], most: int = 30) -> dict:
    """tickvals/ticktext for a plotly category axis (hover still names every row)."""
    if not labels or not isinstance(labels[0], str) or len(labels) <= most:
        return {}
    idx = tick_subset(labels, most)
    return {"tickmode": "array", "tickvals": [labels[i] for i in idx], "ticktext": [labels[i] for i in idx]}


def _mpl_heatmaps(fig: Figure, plt):
    rows, cols = _grid(len(fig.heatmaps))
    side = 6.0 if len(fig.heatmaps) == 1 else 3.2
    mfig, axes = plt.subplots(rows, cols, figsize=(side * cols + 0.6, side * rows + 0.6), dpi=100, squeeze=False)
    for i, h in enumerate(fig.heatmaps):
        ax = axes[i // cols][i % cols]
        _mpl_heatmap(ax, h, fig, mfig)
    for j in range(len(fig.heatmaps), rows * cols):
        axes[j // cols][j % cols].axis("off")
    return mfig


def _mpl_heatmap(ax, h: Heatmap, fig: Figure, mfig) -> None:
    z = np.asarray(h.z, dtype=float)
    if h.diverging:
        lim = float(np.nanmax(np.abs(z))) if np.isfinite(z).any() else 1.0
        im = ax.imshow(z, cmap="RdBu_r", vmin=-lim, vmax=lim, aspect="auto", interpolation="nearest")
    else:
        im = ax.imshow(z, cmap="viridis", aspect="auto", interpolation="nearest")
    for labels, set_ticks, set_labels in ((h.x, ax.set_xticks, ax.set_xticklabels),
                                          (h.y, ax.set_yticks, ax.set_yticklabels)):
        _sparse_ticks(set_ticks, set_labels, [str(v) for v in labels], most=12)
    ax.set_title(h.title, fontsize=9)
    ax.set_xlabel(fig.x_label, fontsize=8)
    ax.set_ylabel(fig.y_label, fontsize=8)
    mfig.colorbar(im, ax=ax, fraction=0.046, pad=0.03)
