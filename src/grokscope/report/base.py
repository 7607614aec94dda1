"""What the report's modules share: the figure data they pass along (`Figure`, its `Series` and
`Heatmap`s, a `Missing` figure), and the small helpers more than one of them uses.

`figures.py` and `lm.py` build figures, `render.py` draws them, `html.py` puts them on the page;
each of them imports from here and from `data.py`, never from one another's privates.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd

from grokscope.report.data import RunData

PHASE_COLOURS = {"memorization": "#e8b4b4", "circuit_formation": "#b9d8b0", "cleanup": "#a9c8e8"}


@dataclass
class Series:
    """One curve (or bar set, or sample for a histogram)."""

    name: str
    x: np.ndarray  # [n] numbers, or category labels for bars
    y: np.ndarray  # [n]
    dash: bool = False
    hidden: bool = False  # starts hidden in the interactive figure (click its legend entry)


@dataclass
class Heatmap:
    """One panel of a heatmap grid: z[row, col] with row/column labels (row 0 drawn at the top)."""

    title: str
    z: np.ndarray  # [rows, cols]
    x: list[str] | np.ndarray  # [cols] column labels
    y: list[str] | np.ndarray  # [rows] row labels
    diverging: bool = False  # signed values: a colour scale centred on 0


@dataclass
class Figure:
    key: str  # PNG file stem and HTML anchor: [a-z0-9_]+
    title: str
    caption: str
    kind: Literal["lines", "bars", "hist", "heatmaps"]
    series: list[Series] = field(default_factory=list)
    heatmaps: list[Heatmap] = field(default_factory=list)
    x_label: str = ""
    y_label: str = ""
    log_y: bool = False  # the initial y scale; the interactive figure has a log/linear toggle
    toggle_log: bool = True
    phases: dict[str, list[float]] = field(default_factory=dict)  # shaded spans over x (epochs)
    vlines: list[tuple[float, str]] = field(default_factory=list)  # marked x values (a threshold), with a label
    x_range: tuple[float, float] | None = None  # fixed x extent (hist bins span it); None = auto
    section: str = "Training"


@dataclass
class Missing:
    """A figure the report would show but cannot yet, and what it needs."""

    key: str
    title: str
    reason: str
    section: str = "Training"


Builder = Callable[[RunData], "Figure | Missing | list[Figure]"]


def floats(df: pd.DataFrame, name: str) -> np.ndarray:
    """A table's column as float numbers (NaN where empty)."""
    return df[name].to_numpy(dtype=float)


def has(df: pd.DataFrame, *cols: str) -> bool:
    """Whether the table has rows and each of `cols` holds at least one value."""
    return len(df) > 0 and all(c in df and df[c].notna().any() for c in cols)


def fmt(v: Any) -> str:
    """A stored value as short text (not yet escaped)."""
    if v is None:
        return "\u2014"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return "\u2014" if math.isnan(v) else f"{v:.4g}"
    if isinstance(v, list | tuple):
        return ", ".join(fmt(x) for x in v) if v else "none"
    if isinstance(v, Mapping):
        return "; ".join(f"{k}: {fmt(x)}" for k, x in v.items()) if v else "none"
    return str(v)


def phase_colour(name: str) -> str:
    """The shading of a training phase, the same on the page, in its legend and in the PNGs."""
    return PHASE_COLOURS.get(name, "#dddddd")
