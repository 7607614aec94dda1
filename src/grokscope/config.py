"""Run configuration as data: pydantic models, YAML I/O and dotted ``--set`` overrides.

Every knob of a run lives here with its default and the reason for it (the mainline's values
are Nanda et al. 2023, Section 3). Config is validated once, at the edge; code below trusts it.
A bad value raises ``ConfigError`` whose message is one line naming the field and what is allowed.
"""

from __future__ import annotations

import copy
import math
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


class ConfigError(ValueError):
    """Bad user input in a config: the message is one line meant for the user."""


class _Strict(BaseModel):
    # allow_inf_nan: an infinite learning rate or weight decay is a typo, never a setting
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


# ---------------------------------------------------------------------------------------- YAML
class _StrictLoader(yaml.SafeLoader):
    """safe_load that refuses aliases (a few lines of `&a [*a, *a]` expand to gigabytes) and
    duplicate keys (YAML would silently keep the last)."""

    def compose_node(self, parent, index):  # type: ignore[no-untyped-def]
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.constructor.ConstructorError(
                None, None, "aliases (*name) are not allowed; write the value out", event.start_mark)
        return super().compose_node(parent, index)

    def construct_mapping(self, node, deep=False):  # type: ignore[no-untyped-def]
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, list | dict):
                continue  # SafeLoader raises its own error for an unhashable key
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


MAX_CONFIG_BYTES = 1 << 20  # a run config is a few hundred bytes; anything near this is not one


def parse_yaml(text: str) -> Any:
    """YAML text -> Python objects, for anything a user wrote; raises ValueError with a one-line
    reason (not YAML, an alias, a duplicate key, nested too deeply)."""
    if len(text) > MAX_CONFIG_BYTES:
        raise ValueError(f"too large ({len(text):,} characters; a config is a few hundred)")
    try:
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.MarkedYAMLError as err:  # its str() spans lines: keep the message one line
        mark = err.problem_mark
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ValueError(f"not YAML: {err.problem or err.context}{where}") from None
    except yaml.YAMLError as err:
        raise ValueError(f"not YAML: {type(err).__name__}") from None
    except RecursionError:
        raise ValueError("nested too deeply to be a config") from None


def read_yaml_file(path: str | Path) -> Any:
    """A YAML file a user named, parsed by parse_yaml; ValueError with a one-line reason."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except IsADirectoryError:
        raise ValueError("a folder, not a file") from None
    except OSError as err:
        raise ValueError(f"unreadable: {err.strerror}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError("not text (a binary file?)") from None
    return parse_yaml(text)


NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._=+-]{0,99}")


def check_name(name: str, what: str = "name") -> str:
    """A run or experiment name is one path component: letters, digits, `._=+-`, at most 100
    characters, not starting with a dot. It decides a default folder (runs/NAME), so a name
    like `../x` or `/tmp/x` must never reach the file system."""
    if not NAME_RE.fullmatch(name) or ".." in name:
        raise ConfigError(f"{what} {name!r} is not a plain name: use letters, digits and . _ = + - "
                          f"(at most 100, no '/', no '..', not starting with a dot), or choose the folder with --out")
    return name


def is_prime(n: int) -> bool:
    if n < 2:
        return False
    return all(n % d for d in range(2, math.isqrt(n) + 1))


# Bounds on sizes: far above any run this tool is for, low enough that a typo (epochs=1e12) is
# refused with one line instead of reaching the allocator.
MAX_STEPS = 10**8  # 10^8 steps is a month at this machine's mainline speed


# ---------------------------------------------------------------------------------------- tasks
ModularOp = Literal["add", "sub", "mul", "div", "poly", "rand"]


class ModularTask(_Strict):
    """(a op b) mod p with inputs `a b =` (Nanda et al. 2023, Section 3)."""

    name: Literal["modular"] = "modular"
    p: int = Field(113, ge=3, le=4099, description="prime modulus")
    op: ModularOp = "add"  # poly = a^2 + ab + b^2; rand = a fixed random table
    frac_train: float = Field(0.3, gt=0, lt=1)

    @model_validator(mode="after")
    def _prime(self) -> ModularTask:
        if not is_prime(self.p):
            raise ValueError(f"task.p must be a prime (got {self.p}); try 53, 109, 113 or 401")
        return self


class DigitsTask(_Strict):
    """n-digit addition `x + y =` predicting the n+1 answer digits (Nanda et al. 2023, Appendix D.3)."""

    name: Literal["digits"] = "digits"
    n_digits: int = Field(5, ge=1, le=12)
    n_train: int | None = Field(700, ge=1, le=10**7, description="fixed train set size; null = fresh data every step")
    n_test: int = Field(2000, ge=1, le=10**6)

    @model_validator(mode="after")
    def _enough_pairs(self) -> DigitsTask:
        if (self.n_train or 0) + self.n_test > 100**self.n_digits:
            raise ValueError(f"task.n_train + task.n_test must be at most {100**self.n_digits} "
                             f"(the distinct {self.n_digits}-digit pairs)")
        return self


class RepeatedSubsequenceTask(_Strict):
    """Random tokens with a subsequence repeated several times (Nanda et al. 2023, Appendix D.3)."""

    name: Literal["repeated_subsequence"] = "repeated_subsequence"
    vocab: int = Field(128, ge=4, le=65536)
    seq_len: int = Field(85, ge=4, le=4096)
    sub_len: int = Field(16, ge=1)
    repeats: int = Field(3, ge=2)
    n_train: int | None = Field(512, ge=1, le=10**7)
    n_test: int = Field(1024, ge=1, le=10**6)
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
    """Tokens 0..vocab-1, exactly one token >= vocab/2; output that token (Nanda et al. 2023, Appendix D.3)."""

    name: Literal["skip_trigram"] = "skip_trigram"
    vocab: int = Field(20, ge=4, le=65536, multiple_of=2)
    seq_len: int = Field(16, ge=2, le=4096)
    n_train: int | None = Field(512, ge=1, le=10**7)
    n_test: int = Field(1024, ge=1, le=10**6)


class TextTask(_Strict):
    """Next-token prediction on real text, with the copy test (Lv et al. 2024; docs/measures.md, part 2)."""

    name: Literal["text"] = "text"
    corpus: str = "default"  # "default" = Austen + KJV from package registries; "stdlib"; a path / hf:NAME; A+B mixes
    corpus_shares: list[float] | None = Field(None, description="share of training characters from each '+'-joined "
                                              "part of task.corpus, in order (default+stdlib: [0.5, 0.5]); they sum "
                                              "to 1; null = all of every part")
    tokenizer: Literal["bpe", "char"] = "bpe"
    vocab_size: int = Field(2048, ge=32, le=65536)
    context: int = Field(256, ge=8, le=8192)
    repeat_frac: float = Field(0.0, ge=0, le=1, description="share of windows that repeat an earlier span")
    repeat_max_len: int | None = Field(None, ge=8, description="longest repeated span; null = context/4")
    repeat_random: float = Field(0.0, ge=0, le=1, description="share of the repeated spans that are random tokens "
                                 "(written twice over the text) instead of a copy of the window's own text")
    repeat_symbols: int = Field(0, ge=0, le=60000, description="extra token ids, beyond the tokenizer's, added to "
                                "the model's vocabulary; random spans draw uniformly from all ids (the tokenizer's "
                                "and these), so that a one-token match is distinctive; only training windows use them")
    copy_vocab: Literal["tokenizer", "model"] = Field("tokenizer", description="ids the paper's copy test draws "
                                                      "from: the tokenizer's, or the model's whole vocabulary (the "
                                                      "tokenizer's and task.repeat_symbols' extra ids)")
    copy_lines: int = Field(50, ge=2, le=10000, description="lines per copy sample; fewer if the context is short")
    copy_samples: int = Field(50, ge=1, le=10000, description="copy-test samples per evaluation")
    copy_queries: int = Field(5, ge=1, le=1000, description="query positions (evenly spaced lines; the paper: 10)")
    val_book: str | None = Field(None, description="held-out document; null = persuasion (default corpus) or the last")
    cache_dir: str | None = Field(None, description="tokenizer/token cache; null = $GROKSCOPE_CACHE or ~/.cache/grokscope")
    eval_windows: int = Field(16, ge=1, le=10000, description="fixed train and val windows for the evaluation losses")
    induction_len: int = Field(100, ge=4, le=4096, description="s: length of each half of the repeated random sequence")

    @model_validator(mode="after")
    def _shares(self) -> TextTask:
        if self.corpus_shares is not None:
            parts = self.corpus.split("+")
            if len(self.corpus_shares) != len(parts):
                raise ValueError(f"task.corpus_shares needs one share per part of task.corpus ({len(parts)}: "
                                 f"{', '.join(parts)}), got {len(self.corpus_shares)}")
            if any(x < 0 for x in self.corpus_shares) or not math.isclose(sum(self.corpus_shares), 1.0, abs_tol=1e-6):
                raise ValueError(f"task.corpus_shares must be non-negative and sum to 1 (got {self.corpus_shares})")
        return self

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
    """Transformer shape. Defaults are the grokking paper's mainline (Nanda et al. 2023, Section 3)."""

    arch: Literal["transformer", "llama"] = "transformer"
    n_layers: int = Field(1, ge=1, le=64)
    d_model: int = Field(128, ge=1, le=16384)
    n_heads: int = Field(4, ge=1, le=256)
    d_head: int = Field(32, ge=1, le=4096)
    d_mlp: int = Field(512, ge=1, le=65536)
    act_fn: Literal["relu", "gelu", "silu"] = "relu"
    attn_only: bool = False
    normalization: Literal["none", "LN", "RMS"] = "none"
    # N(0, 1/d_model) keeps activations O(1) and avoids float32 subnormals in early training.
    init_std: float | None = Field(None, gt=0, le=100, description="null = 1/sqrt(d_model)")
    tie_embeddings: bool = False
    rope_base: float = Field(10000.0, gt=0, le=1e12)
    attn_dropout: float = Field(0.0, ge=0, lt=1)
    resid_dropout: float = Field(0.0, ge=0, lt=1)


# ------------------------------------------------------------------------------------ optimiser
class FilterConfig(_Strict):
    """Grokfast gradient filters (Lee et al. 2024): amplify the slow component of the gradient."""

    kind: Literal["none", "ema", "ma"] = "none"
    alpha: float = Field(0.98, ge=0, lt=1, description="EMA momentum (kind=ema)")
    lamb: float = Field(2.0, ge=0, le=1000, description="amplification of the filtered gradient")
    window: int = Field(100, ge=1, le=100000, description="moving-average window (kind=ma)")


class OptimConfig(_Strict):
    lr: float = Field(1e-3, gt=0, le=10)
    weight_decay: float = Field(1.0, ge=0, le=1000)  # decoupled (AdamW); 1.0 is the paper's, needed to grok
    betas: tuple[float, float] = (0.9, 0.98)  # 0.98 not 0.999: the paper's, faster adaptation
    eps: float = Field(1e-8, gt=0, le=1)
    warmup_steps: int = Field(10, ge=0, le=MAX_STEPS)  # linear from 0
    schedule: Literal["constant", "cosine"] = "constant"  # after warmup
    min_lr_frac: float = Field(0.1, ge=0, le=1, description="cosine floor as a share of lr")
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout on MLP neurons")
    l1: float = Field(0.0, ge=0, le=1000, description="L1 penalty on all weights, added to the loss")
    grad_clip: float | None = Field(None, gt=0, le=1e6)
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
    patience: int = Field(2000, ge=0, le=MAX_STEPS)


class TrainConfig(_Strict):
    epochs: int | None = Field(None, ge=0, le=MAX_STEPS, description="full passes over the train set")
    steps: int | None = Field(None, ge=0, le=MAX_STEPS, description="optimiser steps (overrides epochs)")
    batch_size: int | None = Field(None, ge=1, le=10**7, description="null = full batch")
    grad_accum: int = Field(1, ge=1, le=4096, description=(
        "micro-batches per optimiser step. Modular tasks split the step's batch (batch_size rows, or "
        "the full batch) into this many: the same update in less memory. The copy LM takes "
        "batch_size windows per micro-batch: a step of batch_size * grad_accum windows"))
    checkpoint_every: int = Field(100, ge=1, le=MAX_STEPS, description="in steps")
    eval_every: int = Field(10, ge=1, le=MAX_STEPS, description="in steps; cheap metrics")
    eval_schedule: Literal["linear", "log"] = "linear"
    stop: StopConfig | None = None
    threads: int | None = Field(None, ge=1, le=1024, description="torch threads; null = all cores")
    fast: bool = True  # the tabulated last-position step (same numbers, fewer FLOPs)
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description=(
        "where to train: auto = CUDA when torch sees a device, else CPU (the grokking tasks' fast step, "
        "train.fast, is CPU-only, so auto keeps them on the CPU); cuda fails with one line where there is none"))
    precision: Literal["float32", "bf16"] = Field("float32", description=(
        "the copy LM's training step: bf16 autocast (matrix products in bfloat16, weights, optimiser and loss in "
        "float32); evaluations stay float32"))


class RunConfig(_Strict):
    """A whole run: what a run folder's config.yaml holds, fully resolved."""

    name: str | None = None
    seed: int = Field(0, ge=0, le=2**32 - 1)
    task: TaskConfig = ModularTask()
    model: ModelConfig = ModelConfig()
    optim: OptimConfig = OptimConfig()
    train: TrainConfig = TrainConfig(epochs=15000)
    paper: dict[str, Any] | None = None  # what the paper reports, for experiments' reports

    @field_validator("name")
    @classmethod
    def _plain_name(cls, v: str | None) -> str | None:
        if v is not None:
            if not NAME_RE.fullmatch(v) or ".." in v:
                raise ValueError("must be a plain name: letters, digits and . _ = + - (at most 100, no '/', "
                                 "no '..', not starting with a dot); or choose the folder with --out")
        return v

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
def parse_scalar(text: str) -> Any:
    """`--set` values are YAML scalars: 1e-3, true, null, [0.9, 0.98], add."""
    try:
        return parse_yaml(text)
    except ValueError as err:
        if str(err).startswith("not YAML"):
            return text  # a bare word with YAML punctuation in it: take it as text
        raise ConfigError(f"--set value {text[:40]!r}: {err}") from None


def format_value(v: Any) -> str:
    """A config value as short text, as it appears in a sweep trial's name and on its page: 0.3, 1e-05,
    null, true, add, [0.9,0.98]."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, list | tuple):
        return "[" + ",".join(format_value(x) for x in v) + "]"
    return str(v)


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
        node[parts[-1]] = parse_scalar(value)
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
    raw = apply_overrides(copy.deepcopy(raw), overrides or [])
    if isinstance(raw.get("task"), dict):
        raw["task"].setdefault("name", "modular")  # the mainline task needs no name
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_one_line(err)) from None


def load(path: str | Path, overrides: list[str] | None = None) -> RunConfig:
    raw = read_config_file(path)
    raw.pop("experiment", None)  # experiment metadata lives beside the run config
    return resolve(raw, overrides)


def read_config_file(path: str | Path) -> dict[str, Any]:
    """A config file the user named, as a mapping; ConfigError (one line) for a missing, binary,
    malformed, empty or non-mapping file."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config file {str(path)!r} does not exist; pass a YAML file or a name from "
                          "`grokscope reproduce --list`")
    try:
        raw = read_yaml_file(path)
    except ValueError as err:
        why = str(err)
        if why.startswith("not YAML: "):
            why = f"not valid YAML ({why.removeprefix('not YAML: ')})"
        raise ConfigError(f"config file {str(path)!r} is {why}") from None
    if raw is None:
        raise ConfigError(f"config file {str(path)!r} is empty; `grokscope config mainline > {path.name}` "
                          "writes a complete one to start from")
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {str(path)!r} must hold a mapping of sections (task, model, ...)")
    return raw


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


def estimate_bytes(cfg: RunConfig) -> int:
    """A rough upper bound on a run's peak memory in bytes (activations kept for the backward
    pass over the largest batch it evaluates, attention patterns, parameters and AdamW's state).
    Used only to refuse a config that cannot fit, before anything is allocated."""
    m, t, b = cfg.model, cfg.task, cfg.train.batch_size or 128
    if t.name == "modular":
        n, ctx, vocab = t.p * t.p, 3, t.p + 1  # evaluation covers every pair
    elif t.name == "digits":
        n, ctx, vocab = (t.n_train or b) + t.n_test, 3 * t.n_digits + 3, 12
    elif t.name == "text":
        n, ctx, vocab = b * cfg.train.grad_accum, t.context, t.vocab_size + t.repeat_symbols
    else:
        n, ctx, vocab = (t.n_train or b) + t.n_test, t.seq_len, t.vocab
    width = 6 * m.d_model + 4 * m.n_heads * m.d_head + 3 * m.d_mlp + 2 * m.n_heads * ctx
    per_example = ctx * (m.n_layers * width + 3 * vocab)
    params = m.n_layers * (4 * m.d_model * m.n_heads * m.d_head + 2 * m.d_model * m.d_mlp) + 2 * vocab * m.d_model
    return 4 * n * per_example + 16 * params
