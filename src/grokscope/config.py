"""Run configuration as data: pydantic models, YAML I/O and dotted ``--set`` overrides.

Every knob of a run lives here with its default and the reason for it (SPEC.md section 1 for the
mainline values). Config is validated once, at the edge; code below trusts it. A bad value raises
``ConfigError`` whose message is one line naming the field and what is allowed.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class ConfigError(ValueError):
    """Bad user input in a config: the message is one line meant for the user."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def is_prime(n: int) -> bool:
    if n < 2:
        return False
    return all(n % d for d in range(2, math.isqrt(n) + 1))


# ---------------------------------------------------------------------------------------- tasks
ModularOp = Literal["add", "sub", "mul", "div", "poly", "rand"]


class ModularTask(_Strict):
    """(a op b) mod p with inputs `a b =` (SPEC section 1)."""

    name: Literal["modular"] = "modular"
    p: int = Field(113, ge=3, description="prime modulus")
    op: ModularOp = "add"  # poly = a^2 + ab + b^2; rand = a fixed random table
    frac_train: float = Field(0.3, gt=0, lt=1)

    @model_validator(mode="after")
    def _prime(self) -> ModularTask:
        if not is_prime(self.p):
            raise ValueError(f"task.p must be a prime (got {self.p}); try 53, 109, 113 or 401")
        return self


class DigitsTask(_Strict):
    """n-digit addition `x + y =` predicting the n+1 answer digits (SPEC section 6)."""

    name: Literal["digits"] = "digits"
    n_digits: int = Field(5, ge=1, le=12)
    n_train: int | None = Field(700, ge=1, description="fixed train set size; null = fresh data every step")
    n_test: int = Field(2000, ge=1)

    @model_validator(mode="after")
    def _enough_pairs(self) -> DigitsTask:
        if (self.n_train or 0) + self.n_test > 100**self.n_digits:
            raise ValueError(f"task.n_train + task.n_test must be at most {100**self.n_digits} "
                             f"(the distinct {self.n_digits}-digit pairs)")
        return self


class RepeatedSubsequenceTask(_Strict):
    """Random tokens with a subsequence repeated several times (SPEC section 6)."""

    name: Literal["repeated_subsequence"] = "repeated_subsequence"
    vocab: int = Field(128, ge=4)
    seq_len: int = Field(85, ge=4)
    sub_len: int = Field(16, ge=1)
    repeats: int = Field(3, ge=2)
    n_train: int | None = Field(512, ge=1)
    n_test: int = Field(1024, ge=1)
    # distinct tokens in the subsequence, filler avoids them: every scored token is determined
    distinct: bool = True

    @model_validator(mode="after")
    def _fits(self) -> RepeatedSubsequenceTask:
        if self.repeats * self.sub_len > self.seq_len:
            raise ValueError(f"task.seq_len must hold the repeats: at least {self.repeats * self.sub_len}")
        if self.sub_len < 2:
            raise ValueError("task.sub_len must be at least 2 (its first token is never scored)")
        if self.distinct and self.sub_len >= self.vocab:
            raise ValueError("task.sub_len must be below task.vocab when task.distinct is true")
        return self


class SkipTrigramTask(_Strict):
    """Tokens 0..vocab-1, exactly one token >= vocab/2; output that token (SPEC section 6)."""

    name: Literal["skip_trigram"] = "skip_trigram"
    vocab: int = Field(20, ge=4, multiple_of=2)
    seq_len: int = Field(16, ge=2)
    n_train: int | None = Field(512, ge=1)
    n_test: int = Field(1024, ge=1)


class TextTask(_Strict):
    """Next-token prediction on real text, with the copy test (SPEC section 7)."""

    name: Literal["text"] = "text"
    corpus: str = "default"  # "default" = Austen + KJV from package registries; or a path / hf:NAME
    tokenizer: Literal["bpe", "char"] = "bpe"
    vocab_size: int = Field(2048, ge=32)
    context: int = Field(256, ge=8)
    repeat_frac: float = Field(0.0, ge=0, le=1, description="share of windows that repeat an earlier span")
    repeat_max_len: int | None = Field(None, ge=8, description="longest repeated span; null = context/4")
    repeat_random: float = Field(0.0, ge=0, le=1, description="share of the repeated spans that are random tokens "
                                 "(written twice over the text) instead of a copy of the window's own text")
    repeat_symbols: int = Field(0, ge=0, le=60000, description="extra token ids, beyond the tokenizer's, added to "
                                "the model's vocabulary; random spans draw uniformly from all ids (the tokenizer's "
                                "and these), so that a one-token match is distinctive; only training windows use them")
    copy_lines: int = Field(50, ge=2, description="lines per copy sample; fewer if the context is short")
    copy_samples: int = Field(50, ge=1, description="copy-test samples per evaluation")
    copy_queries: int = Field(5, ge=1, description="query positions (evenly spaced lines; the paper: 10)")
    val_book: str | None = Field(None, description="held-out document; null = persuasion (default corpus) or the last")
    cache_dir: str | None = Field(None, description="tokenizer/token cache; null = $GROKSCOPE_CACHE or ~/.cache/grokscope")
    eval_windows: int = Field(16, ge=1, description="fixed train and val windows for the evaluation losses")
    induction_len: int = Field(100, ge=4, description="s: length of each half of the repeated random sequence")

    @model_validator(mode="after")
    def _repeats(self) -> TextTask:
        if self.repeat_random > 0 and self.repeat_frac == 0:
            raise ValueError("task.repeat_random > 0 needs task.repeat_frac > 0 (it says what the repeated spans hold)")
        if self.repeat_symbols > 0 and self.repeat_random == 0:
            raise ValueError("task.repeat_symbols > 0 needs task.repeat_random > 0 (only random spans use the extra ids)")
        return self


TaskConfig = Annotated[
    ModularTask | DigitsTask | RepeatedSubsequenceTask | SkipTrigramTask | TextTask,
    Field(discriminator="name"),
]


# ---------------------------------------------------------------------------------------- model
class ModelConfig(_Strict):
    """Transformer shape. Defaults are the grokking paper's mainline (SPEC section 1)."""

    arch: Literal["transformer", "llama"] = "transformer"
    n_layers: int = Field(1, ge=1, le=64)
    d_model: int = Field(128, ge=1)
    n_heads: int = Field(4, ge=1)
    d_head: int = Field(32, ge=1)
    d_mlp: int = Field(512, ge=1)
    act_fn: Literal["relu", "gelu", "silu"] = "relu"
    attn_only: bool = False
    normalization: Literal["none", "LN", "RMS"] = "none"
    # N(0, 1/d_model) keeps activations O(1) and avoids float32 subnormals in early training.
    init_std: float | None = Field(None, gt=0, description="null = 1/sqrt(d_model)")
    tie_embeddings: bool = False
    rope_base: float = Field(10000.0, gt=0)
    attn_dropout: float = Field(0.0, ge=0, lt=1)
    resid_dropout: float = Field(0.0, ge=0, lt=1)


# ------------------------------------------------------------------------------------ optimiser
class FilterConfig(_Strict):
    """Grokfast gradient filters (Lee et al. 2024): amplify the slow component of the gradient."""

    kind: Literal["none", "ema", "ma"] = "none"
    alpha: float = Field(0.98, ge=0, lt=1, description="EMA momentum (kind=ema)")
    lamb: float = Field(2.0, ge=0, description="amplification of the filtered gradient")
    window: int = Field(100, ge=1, description="moving-average window (kind=ma)")


class OptimConfig(_Strict):
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(1.0, ge=0)  # decoupled (AdamW); 1.0 is the paper's, needed to grok
    betas: tuple[float, float] = (0.9, 0.98)  # 0.98 not 0.999: the paper's, faster adaptation
    eps: float = Field(1e-8, gt=0)
    warmup_steps: int = Field(10, ge=0)  # linear from 0
    schedule: Literal["constant", "cosine"] = "constant"  # after warmup
    min_lr_frac: float = Field(0.1, ge=0, le=1, description="cosine floor as a share of lr")
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout on MLP neurons")
    l1: float = Field(0.0, ge=0, description="L1 penalty on all weights, added to the loss")
    grad_clip: float | None = Field(None, gt=0)
    filter: FilterConfig = FilterConfig()

    @model_validator(mode="after")
    def _betas(self) -> OptimConfig:
        if not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"optim.betas must both lie in [0, 1) (got {list(self.betas)})")
        return self


# -------------------------------------------------------------------------------------- training
class StopConfig(_Strict):
    """Stop early once a metric has stayed above a threshold for `patience` steps."""

    metric: str = "test_acc"
    above: float = 0.99
    patience: int = Field(2000, ge=0)


class TrainConfig(_Strict):
    epochs: int | None = Field(None, ge=0, description="full passes over the train set")
    steps: int | None = Field(None, ge=0, description="optimiser steps (overrides epochs)")
    batch_size: int | None = Field(None, ge=1, description="null = full batch")
    grad_accum: int = Field(1, ge=1, description=(
        "micro-batches per optimiser step. Modular tasks split the step's batch (batch_size rows, or "
        "the full batch) into this many: the same update in less memory. The copy LM takes "
        "batch_size windows per micro-batch: a step of batch_size * grad_accum windows"))
    checkpoint_every: int = Field(100, ge=1, description="in steps")
    eval_every: int = Field(10, ge=1, description="in steps; cheap metrics")
    eval_schedule: Literal["linear", "log"] = "linear"
    stop: StopConfig | None = None
    threads: int | None = Field(None, ge=1, description="torch threads; null = all cores")
    fast: bool = True  # the tabulated last-position step (same numbers, fewer FLOPs)


class RunConfig(_Strict):
    """A whole run: what a run folder's config.yaml holds, fully resolved."""

    name: str | None = None
    seed: int = Field(0, ge=0)
    task: TaskConfig = ModularTask()
    model: ModelConfig = ModelConfig()
    optim: OptimConfig = OptimConfig()
    train: TrainConfig = TrainConfig(epochs=15000)
    paper: dict[str, Any] | None = None  # what the paper reports, for experiments' reports

    @model_validator(mode="after")
    def _shape(self) -> RunConfig:
        if self.train.epochs is None and self.train.steps is None:
            raise ValueError("set train.epochs or train.steps")
        if self.model.arch == "llama" and self.task.name != "text":
            raise ValueError("model.arch=llama needs task.name=text")
        if self.task.name == "text" and self.model.arch != "llama":
            raise ValueError("task.name=text trains the Llama-style LM: set model.arch=llama")
        return self


# ------------------------------------------------------------------------------------------ I/O
def _parse_scalar(text: str) -> Any:
    """`--set` values are YAML scalars: 1e-3, true, null, [0.9, 0.98], add."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `a.b.c=value` overrides to a nested dict (in place; returns it)."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. optim.weight_decay=0.3")
        key, value = item.split("=", 1)
        parts = key.strip().split(".")
        node = raw
        for part in parts[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"--set {key}: {part!r} is a value, not a section")
            node = child
        node[parts[-1]] = _parse_scalar(value)
    return raw


def _one_line(err: ValidationError) -> str:
    first = err.errors()[0]
    loc = ".".join(str(p) for p in first["loc"] if not str(p).startswith(("ModularTask", "function")))
    # discriminated unions put the tag name in loc; drop it for readability
    loc = ".".join(p for p in loc.split(".") if p not in {"modular", "digits", "repeated_subsequence", "skip_trigram", "text"})
    msg = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        msg = "unknown key; `grokscope config mainline` shows the known ones"
    elif first["type"] == "union_tag_invalid":
        msg = "unknown task; choose modular, digits, repeated_subsequence, skip_trigram or text"
    extra = f" (got {first['input']!r})" if "input" in first and not isinstance(first["input"], dict) and "got" not in msg else ""
    where = f"{loc}: " if loc and not msg.startswith(loc.split(".")[0] + ".") else ""
    return f"config error: {where}{msg}{extra}"


def resolve(raw: dict[str, Any], overrides: list[str] | None = None) -> RunConfig:
    raw = apply_overrides(dict(raw), overrides or [])
    if isinstance(raw.get("task"), dict):
        raw["task"].setdefault("name", "modular")  # the mainline task needs no name
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_one_line(err)) from None


def load(path: str | Path, overrides: list[str] | None = None) -> RunConfig:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} not found; pass a YAML file or a name from `grokscope reproduce --list`")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {str(path)!r} is not valid YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {str(path)!r} must hold a mapping of sections (task, model, ...)")
    raw.pop("experiment", None)  # experiment metadata lives beside the run config
    return resolve(raw, overrides)


def to_yaml(cfg: RunConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


def total_steps(cfg: RunConfig, n_train: int | None) -> int:
    """Optimiser steps the run will take; epochs are converted with the batch size."""
    if cfg.train.steps is not None:
        return cfg.train.steps
    assert cfg.train.epochs is not None
    return cfg.train.epochs * steps_per_epoch(cfg, n_train)


def steps_per_epoch(cfg: RunConfig, n_train: int | None) -> int:
    """Steps of batch_size rows per pass over n_train rows (grad_accum splits a step, it does not
    enlarge it); 1 for a full batch or a sampled task."""
    b = cfg.train.batch_size
    if n_train is None or b is None or b >= n_train:
        return 1
    return math.ceil(n_train / b)
