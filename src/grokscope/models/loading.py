"""A run's checkpoint as a model: the grokking family's Transformer or the copy LM's Llama.

The vocabulary and context sizes come from the checkpoint's own tensors (and the LM's context from
its config), so no task data is rebuilt: the copy LM's character vocabulary comes from its corpus.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from grokscope import config as C
from grokscope.store import Run, StoreError


def model_from_run(run_dir: str | Path, step: int | None = None) -> tuple[nn.Module, C.RunConfig, int]:
    """(model with a checkpoint's weights, in eval mode; config; step), the latest when step is None.

    A checkpoint that does not fit config.yaml, or an unreadable config, is a StoreError.
    """
    from grokscope.analysis.runner import read_config  # an unreadable config.yaml is a StoreError

    run = Run(run_dir).require()
    cfg = read_config(run)
    step, tensors = run.load_checkpoint(step)
    needed = ["embed.W_E"] if cfg.model.arch == "llama" else ["embed.W_E", "pos_embed.W_pos", "unembed.W_U"]
    missing = [k for k in needed if k not in tensors]
    if missing:
        raise StoreError(f"checkpoint {run.checkpoint_path(step)} does not match the run's config.yaml "
                         f"(it has no {missing[0]}); restore the checkpoint or the config")
    d_vocab = tensors["embed.W_E"].shape[0]
    if cfg.model.arch == "llama":
        from grokscope.lm.llama import Llama

        model: nn.Module = Llama(cfg.model, d_vocab, cfg.task.context)
    else:
        from grokscope.models.transformer import Transformer

        model = Transformer(cfg.model, d_vocab, tensors["unembed.W_U"].shape[1], tensors["pos_embed.W_pos"].shape[0])
    run.load_into(model, step, tensors)
    return model.eval(), cfg, step
