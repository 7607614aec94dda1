"""Expand a sweep (`--grid KEY=v1,v2 ...` times `--seeds N`) into named trials.

Grid keys multiply (every combination). A key that joins several with commas zips them: each
value is a list with one entry per key, e.g. `task.p,optim.weight_decay=[53,3],[109,1]` runs
p=53 with weight decay 3 and p=109 with 1 (not all four pairs). A zip may include `seed`, to
run more seeds at some settings than at others (`task.frac_train,seed=[0.25,0],[0.25,1],[0.6,0]`);
`--seeds N` then keeps the first N seeds listed at each setting.

A trial is one ordinary run: the base config plus one value per grid key and a seed. Its folder
is named from its settings, `optim.weight_decay=0.3__seed=1`, so the same sweep run twice maps
every trial to the same folder (which is how a rerun finds finished and interrupted trials).
"""

from __future__ import annotations

import copy
import itertools
import re
from dataclasses import dataclass, field
from typing import Any

from grokscope import config as C
from grokscope.config import format_value

SAFE = re.compile(r"[^A-Za-z0-9._=+-]")


@dataclass
class Trial:
    name: str
    settings: dict[str, Any]  # dotted key -> value, in grid order, seed last
    config: C.RunConfig = field(repr=False)


def _split_values(text: str) -> list[str]:
    """Split `v1,v2,[a, b]` on top-level commas (lists such as betas keep their commas)."""
    parts, depth, cur = [], 0, ""
    for ch in text:
        if ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    return [p.strip() for p in parts]


NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def _numbers(v: Any) -> Any:
    """YAML 1.1 reads `1e-3` as text; a grid value that looks like a number is one."""
    if isinstance(v, str) and NUMBER.fullmatch(v):
        return float(v)
    if isinstance(v, list):
        return [_numbers(x) for x in v]
    return v


def parse_grid(items: list[str]) -> dict[str, list[Any]]:
    """`["optim.weight_decay=0.1,0.3", "task.n_train=700,null"]` -> {key: [values]} (YAML scalars)."""
    grid: dict[str, list[Any]] = {}
    for item in items:
        if "=" not in item:
            raise C.ConfigError(f"--grid {item!r}: expected KEY=V1,V2,..., e.g. optim.weight_decay=0.1,0.3,1")
        key, text = (s.strip() for s in item.split("=", 1))
        values = _split_values(text)
        if not key or not text or any(v == "" for v in values):
            raise C.ConfigError(f"--grid {item!r}: expected KEY=V1,V2,... with no empty value")
        if key in grid:
            raise C.ConfigError(f"--grid {key} is given twice; list all its values in one --grid")
        grid[key] = [_numbers(C.parse_scalar(v)) for v in values]
    return grid


def set_path(raw: dict[str, Any], key: str, value: Any) -> None:
    """raw["a"]["b"] = value for key "a.b" (typed, unlike `--set` strings)."""
    node = raw
    parts = key.split(".")
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise C.ConfigError(f"grid key {key}: {part!r} is a value, not a section")
        node = child
    node[parts[-1]] = copy.deepcopy(value)


def trial_name(settings: dict[str, Any]) -> str:
    return SAFE.sub("_", "__".join(f"{k}={format_value(v)}" for k, v in settings.items()))


def expand(raw: dict[str, Any], grid: dict[str, list[Any]], seeds: int | None,
           overrides: list[str] | None = None) -> list[Trial]:
    """Every combination of grid values (first key slowest) times seeds; each config validated.

    `seeds` = N runs seeds base..base+N-1 where base is the config's seed; None keeps the base
    seed only. Raises ConfigError (nothing written yet) on any bad key or value.
    """
    base = C.resolve(copy.deepcopy(raw), overrides)
    if seeds is not None and seeds < 1:
        raise C.ConfigError(f"--seeds must be at least 1 (got {seeds})")
    if "seed" in grid and seeds is not None:
        raise C.ConfigError("give seeds either as --grid seed=... or as --seeds N, not both")
    for key, values in grid.items():
        if not values:
            raise C.ConfigError(f"grid key {key} has no values")
    seed_values = grid.get("seed") or [base.seed + i for i in range(seeds or 1)]
    forced = {k.strip(): _numbers(C.parse_scalar(v)) for k, v in (o.split("=", 1) for o in overrides or [])}
    for key in forced.keys() & grid.keys():
        raise C.ConfigError(f"--set {key} fixes a key the grid sweeps; drop one of them")
    keys = [k for k in grid if k != "seed"]
    zips_seed = any("seed" in (p.strip() for p in k.split(",")) for k in keys if "," in k)
    if zips_seed and "seed" in grid:
        raise C.ConfigError("the grid zips seed with other keys: give no grid key seed beside it")
    if zips_seed:  # the zip names each tuple's seed; --seeds N keeps the first N seeds of each setting
        seed_values = [base.seed]
    for key in keys:
        if "," in key:  # zipped keys: each value is one tuple of settings, e.g. "task.p,optim.weight_decay"
            width = len(key.split(","))
            bad = [v for v in grid[key] if not isinstance(v, list) or len(v) != width]
            if bad:
                raise C.ConfigError(f"grid key {key} zips {width} keys: each value must be a list of {width} (got {bad[0]!r})")
    trials: list[Trial] = []
    seen: dict[str, dict[str, Any]] = {}
    kept: dict[tuple, int] = {}  # zipped seeds: trials so far per setting
    for combo in itertools.product(*(grid[k] for k in keys)):
        for seed in seed_values:
            settings: dict[str, Any] = {}
            for key, value in zip(keys, combo, strict=True):
                if "," in key:
                    settings.update(zip((k.strip() for k in key.split(",")), value, strict=True))
                else:
                    settings[key] = value
            if zips_seed:  # each tuple names its seed, e.g. three seeds at one setting, one at another
                settings["seed"] = settings.pop("seed")
                setting = tuple((k, repr(v)) for k, v in settings.items() if k != "seed")
                kept[setting] = kept.get(setting, 0) + 1
                if seeds is not None and kept[setting] > seeds:
                    continue
            else:
                settings["seed"] = seed
            # --set wins over a grid value of the same key (e.g. a short smoke run of an
            # experiment whose grid sets train.epochs); the name shows the value actually used
            for key in settings.keys() & forced.keys():
                settings[key] = forced[key]
            name = trial_name(settings)
            if name in seen:
                raise C.ConfigError(f"trials {seen[name]} and {settings} get the same folder name {name!r}; make the grid values distinct")
            seen[name] = settings
            trial_raw = C.apply_overrides(copy.deepcopy(raw), list(overrides or []))
            for k, v in settings.items():
                set_path(trial_raw, k, v)
            try:
                cfg = C.resolve(trial_raw)
            except C.ConfigError as err:
                raise C.ConfigError(f"trial {name}: {err}") from None
            trials.append(Trial(name, settings, cfg.model_copy(update={"name": name})))
    return trials
