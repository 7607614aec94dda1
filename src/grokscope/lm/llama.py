"""The copy LM's model: `grokscope.models.llama` (Lv et al. 2024), under the path the LM code has
always used. It lives in `models/` so that loading a run's model never imports the LM's layer."""

from grokscope.models.llama import (
    Llama,
    LlamaAttention,
    LlamaBlock,
    SwiGLU,
    apply_rope,
    build_llama,
    n_params,
    rope_tables,
)

__all__ = ["Llama", "LlamaAttention", "LlamaBlock", "SwiGLU", "apply_rope", "build_llama", "n_params", "rope_tables"]
