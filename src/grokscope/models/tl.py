"""TransformerLens interop: a grokscope model or run as a `HookedTransformer`.

grokscope's parameters already carry TransformerLens's names and shapes, so the conversion is a
config translation plus `load_state_dict`. What the two models' state dicts do not share is
filled so that the HookedTransformer computes the same function:
- the attention biases `b_Q, b_K, b_V, b_O` and the unembedding bias `b_U`, which grokscope's
  models do not have (the grokking paper's model has no biases outside the MLP; Nanda's notebook
  keeps TransformerLens's at zero and frozen), are zero;
- a tied copy LM's `unembed.W_U` is `embed.W_E.T` (HookedTransformer has no tying);
- the copy LM's SwiGLU has no MLP biases; `b_in` and `b_out` are zero.

`HookedTransformer` was removed in TransformerLens 4.0 (its successor, TransformerBridge, wraps
Hugging Face models only), so the `[tl]` extra pins transformer-lens below 4.

    from grokscope.models.tl import load_hooked
    model = load_hooked("runs/mainline")                  # the latest checkpoint
    logits, cache = model.run_with_cache(tokens)          # TransformerLens's own cache and hooks
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from grokscope.models.llama import Llama
from grokscope.models.loading import model_from_run
from grokscope.models.transformer import LayerNorm, RMSNorm

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer, HookedTransformerConfig


def _tl():
    try:
        import transformer_lens
    except ImportError:
        raise ImportError("TransformerLens is not installed; install it with "
                          "`pip install 'grokscope[tl]'` (transformer-lens >= 2, < 4)") from None
    try:
        return transformer_lens.HookedTransformer, transformer_lens.HookedTransformerConfig
    except ImportError:  # 4.0 raises ImportError for the names it removed
        raise ImportError(f"transformer-lens {transformer_lens.__version__} has no HookedTransformer (removed "
                          "in 4.0); install `transformer-lens>=2,<4`") from None


def hooked_config(model: nn.Module) -> HookedTransformerConfig:
    """The HookedTransformerConfig of a grokscope `Transformer` or `Llama`."""
    _, Config = _tl()
    cfg = model.cfg
    # HookedTransformerConfig holds one epsilon for all norms; a grokscope model uses one kind
    eps = next((m.eps for m in model.modules() if isinstance(m, LayerNorm | RMSNorm)), 1e-5)
    common = dict(n_layers=cfg.n_layers, d_model=cfg.d_model, n_heads=cfg.n_heads, d_head=cfg.d_head,
                  d_mlp=cfg.d_mlp, d_vocab=model.d_vocab, n_ctx=model.n_ctx, device="cpu",
                  dtype=model.embed.W_E.dtype, init_weights=False, default_prepend_bos=False, eps=eps)
    if isinstance(model, Llama):
        return Config(**common, d_vocab_out=model.d_vocab, act_fn="silu", gated_mlp=True,
                      normalization_type="RMS", final_rms=True,
                      positional_embedding_type="rotary", rotary_dim=cfg.d_head, rotary_base=cfg.rope_base,
                      rotary_adjacent_pairs=False, original_architecture="LlamaForCausalLM")
    norm = None if cfg.normalization == "none" else cfg.normalization
    return Config(**common, d_vocab_out=model.d_vocab_out, act_fn=cfg.act_fn, attn_only=cfg.attn_only,
                  normalization_type=norm, positional_embedding_type="standard")


def to_hooked(model: nn.Module) -> HookedTransformer:
    """A HookedTransformer computing the same function as `model`, with copies of its parameters."""
    Hooked, _ = _tl()
    with warnings.catch_warnings():  # 3.x warns that 4.0 removes the class (see the docstring)
        warnings.filterwarnings("ignore", message="HookedTransformer is deprecated", category=DeprecationWarning)
        hooked = Hooked(hooked_config(model))
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    if isinstance(model, Llama) and model.unembed is None:
        state["unembed.W_U"] = model.embed.W_E.detach().T.clone()
    target = hooked.state_dict()
    unknown = sorted(set(state) - set(target))
    if unknown:
        raise ValueError(f"HookedTransformer has no parameter {unknown[0]!r}; this transformer-lens "
                         "version names its parameters differently")
    for name, tensor in target.items():
        if name in state:
            if tuple(state[name].shape) != tuple(tensor.shape):
                raise ValueError(f"{name}: grokscope's shape {tuple(state[name].shape)} is not "
                                 f"TransformerLens's {tuple(tensor.shape)}")
        elif _is_bias(name):
            state[name] = torch.zeros_like(tensor)
        else:  # buffers: masks, rotary tables, IGNORE
            state[name] = tensor
    hooked.load_state_dict(state)
    return hooked.eval()


def _is_bias(name: str) -> bool:
    return name.rsplit(".", 1)[-1] in ("b_Q", "b_K", "b_V", "b_O", "b_U", "b_in", "b_out", "_b_K", "_b_V")


def load_hooked(run_dir: str | Path, step: int | None = None) -> HookedTransformer:
    """A run's checkpoint (the latest when step is None) as a HookedTransformer."""
    _tl()  # fail before reading the run if TransformerLens is missing
    return to_hooked(model_from_run(run_dir, step)[0])


__all__ = ["hooked_config", "to_hooked", "model_from_run", "load_hooked"]
