"""A run's checkpoint as a model, whichever family it is: looked up by `model.arch` in `FAMILIES`.

The vocabulary and context sizes come from the checkpoint's own tensors (and the LM's context from
its config), so no task data is rebuilt: the copy LM's character vocabulary comes from its corpus.
A family is its model class plus the checkpoint tensors that size it; a new family registers here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from grokscope import config as C
from grokscope.models.llama import Llama
from grokscope.models.transformer import Transformer
from grokscope.store import Run, StoreError, read_run_config


@dataclass(frozen=True)
class Family:
    """How to rebuild one model family from a run's config and checkpoint tensors."""

    needed: tuple[str, ...]  # tensors that size the model: a checkpoint without them does not fit
    build: Callable[[C.RunConfig, Mapping[str, torch.Tensor]], nn.Module]  # an empty model of those sizes


FAMILIES: dict[str, Family] = {
    "transformer": Family(
        ("embed.W_E", "pos_embed.W_pos", "unembed.W_U"),
        lambda cfg, t: Transformer(cfg.model, t["embed.W_E"].shape[0], t["unembed.W_U"].shape[1],
                                   t["pos_embed.W_pos"].shape[0])),
    "llama": Family(("embed.W_E",), lambda cfg, t: Llama(cfg.model, t["embed.W_E"].shape[0], cfg.task.context)),
}


def family(arch: str) -> Family:
    """The registered family of `model.arch`."""
    try:
        return FAMILIES[arch]
    except KeyError:
        raise C.ConfigError(f"model.arch {arch!r} has no model family to load; known: {', '.join(FAMILIES)}") from None


def model_from_run(run_dir: str | Path, step: int | None = None) -> tuple[nn.Module, C.RunConfig, int]:
    """(model with a checkpoint's weights, in eval mode; config; step), the latest when step is None.

    A checkpoint that does not fit config.yaml, or an unreadable config, is a StoreError.
    """
    run = Run(run_dir)
    cfg = read_run_config(run)  # an unreadable config.yaml is a StoreError
    fam = family(cfg.model.arch)
    step, tensors = run.load_checkpoint(step)
    missing = [k for k in fam.needed if k not in tensors]
    if missing:
        raise StoreError(f"checkpoint {run.checkpoint_path(step)} does not match the run's config.yaml "
                         f"(it has no {missing[0]}); restore the checkpoint or the config")
    model = fam.build(cfg, tensors)
    run.load_into(model, step, tensors)
    return model.eval(), cfg, step
