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

import yaml

from grokscope import config as C

HERE = Path(__file__).parent


def names() -> list[str]:
    return sorted(p.stem for p in HERE.glob("*.yaml"))


def path_of(name: str) -> Path:
    path = HERE / f"{name}.yaml"
    if not path.is_file():
        raise C.ConfigError(f"unknown experiment {name!r}; `grokscope reproduce --list` shows: {', '.join(names())}")
    return path


def meta(name: str) -> dict[str, Any]:
    """The `experiment:` section of a named experiment."""
    return dict(yaml.safe_load(path_of(name).read_text()).get("experiment") or {})


def raw_config(name_or_path: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(run config dict, experiment section) from an experiment name or a YAML path."""
    path = Path(name_or_path)
    if not path.is_file():
        path = path_of(name_or_path)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise C.ConfigError(f"config file {str(path)!r} is not valid YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise C.ConfigError(f"config file {str(path)!r} must hold a mapping of sections (task, model, ...)")
    exp = dict(raw.pop("experiment", None) or {})
    return raw, exp


def load(name_or_path: str, overrides: list[str] | None = None) -> tuple[C.RunConfig, dict[str, Any]]:
    raw, exp = raw_config(name_or_path)
    return C.resolve(raw, overrides), exp
