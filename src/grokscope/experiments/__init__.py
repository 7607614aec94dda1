"""Named, versioned experiments: one YAML file per paper figure or table.

A file holds a run config (task, model, optim, train, seed) plus an `experiment:` section that
says what it reproduces and what the paper reports:

    experiment:
      title: Mainline grokking run
      reproduces: Nanda et al. 2023, Figures 2-7
      paper: {grok_epoch: ~10000, ...}
      sweep: {grid: {optim.weight_decay: [0.1, 0.3]}, seeds: 1}   # optional: many runs
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from grokscope import config as C

HERE = Path(__file__).parent


def names() -> list[str]:
    return sorted(p.stem for p in HERE.glob("*.yaml"))


def path_of(name: str) -> Path:
    if name not in names():
        raise C.ConfigError(f"unknown experiment {name!r}; `grokscope reproduce --list` shows: {', '.join(names())}")
    return HERE / f"{name}.yaml"


def meta(name: str) -> dict[str, Any]:
    """The `experiment:` section of a named experiment."""
    return dict(C.read_config_file(path_of(name)).get("experiment") or {})


def looks_like_path(text: str) -> bool:
    return text.endswith((".yaml", ".yml")) or "/" in text or text.startswith(".")


def raw_config(name_or_path: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(run config dict, experiment section) from an experiment name or a YAML path."""
    path = Path(name_or_path)
    if not path.exists() and not looks_like_path(name_or_path):
        path = path_of(name_or_path)  # unknown experiment: one line with the list
    raw = C.read_config_file(path)  # a missing file: "does not exist"
    exp = raw.pop("experiment", None) or {}
    if not isinstance(exp, dict):
        raise C.ConfigError(f"config file {str(path)!r}: its experiment section must be a mapping")
    return raw, dict(exp)


def load(name_or_path: str, overrides: list[str] | None = None) -> tuple[C.RunConfig, dict[str, Any]]:
    raw, exp = raw_config(name_or_path)
    return C.resolve(raw, overrides), exp
