"""Typed run configuration: YAML (safe_load) into one frozen dataclass per component.

Each component (model, tokenizer, data, tasks, schedule, train, logging) receives only
its own section. Unknown keys are errors with a "did you mean" hint; ``--set a.b=value``
overrides any key, the value parsed as YAML.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ernie_cpt.errors import ErnieCptError
from schedules.options import OptionsError, bounded, build_settings, did_you_mean, probability


class ConfigError(OptionsError, ErnieCptError):
    """A configuration that cannot be used, with a message meant for the user."""


@dataclass(frozen=True)
class ModelConfig:
    """Encoder shape (ErnieConfig fields) or a local checkpoint to start from."""

    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    max_position_embeddings: int = 512
    task_type_vocab_size: int = 16
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    hidden_act: str = "gelu"
    attn_implementation: str = "sdpa"
    # A local directory holding a BERT or ERNIE checkpoint (config.json + safetensors).
    init_from: str | None = None


@dataclass(frozen=True)
class TokenizerConfig:
    """A local fast tokenizer directory, or the settings of one trained on the corpus."""

    path: str | None = None
    vocab_size: int = 8000
    min_frequency: int = 2
    lowercase: bool = True
    # Documents used to train the tokenizer (None = all).
    max_training_documents: int | None = None


@dataclass(frozen=True)
class DataConfig:
    """Where the corpus comes from and how documents are cut into examples."""

    # A file, a folder, a save_to_disk folder, "builtin:wikipedia-sample" or a hub name.
    corpus: str = "builtin:wikipedia-sample"
    # json | csv | parquet | text | arrow; None = guess from the file suffix.
    format: str | None = None
    split: str = "train"
    text_field: str = "text"
    title_field: str = "title"
    id_field: str = "id"
    # For plain text files: "document" = one document per file, "paragraph" = blank-line
    # separated blocks are documents, "line" = each line is a document.
    text_sample_by: str = "document"
    max_documents: int | None = None
    # Documents whose hash falls under this fraction form the held-out split.
    heldout_fraction: float = 0.05
    max_seq_length: int = 128
    # Longer sentences are cut at whitespace into pieces of at most this many characters.
    max_sentence_chars: int = 2000
    # Longer documents are skipped (and counted) before sentence splitting.
    max_document_chars: int = 5_000_000
    # sentencex (fast, default) | pysbd (the splitter before data-format version 2).
    sentence_splitter: str = "sentencex"
    # A task with no examples: "error" (list every such task) | "skip" (drop it, warn).
    on_empty_task: str = "error"
    num_proc: int = 1
    # Where prepared datasets are cached (None = <output-dir>/../.cache or ~/.cache).
    cache_dir: str | None = None
    seed: int = 1234


@dataclass(frozen=True)
class ScheduleConfig:
    """How tasks are combined over time (see ``schedules``)."""

    # cmtl | continual | multitask | pairwise | custom
    kind: str = "cmtl"
    iterations_per_task: int = 1000
    # For kind=custom: a list of stages, each {name, budgets: {task: steps}, ...}.
    stages: list[dict[str, Any]] | None = None
    sampling: str = "remaining_budget"
    # The sampler's options (see schedules.sampling), e.g. {weights: {mlm: 3, ...}} for fixed.
    sampling_options: dict[str, Any] = field(default_factory=dict)
    # Loss weighting for every stage that does not name its own (see ernie_cpt.training.weighting).
    weighting: str = "fixed"
    weighting_options: dict[str, Any] = field(default_factory=dict)
    seed: int = 0


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation, DeepSpeed and checkpointing settings."""

    micro_batch_size: int = 32
    gradient_accumulation_steps: int = 1
    lr: float = 1e-4
    min_lr: float = 0.0
    warmup_steps: int = 100
    # linear | cosine | constant (after warm-up)
    lr_decay: str = "linear"
    weight_decay: float = 0.01
    adam_beta1: float = 0.9
    adam_beta2: float = 0.98
    adam_eps: float = 1e-6
    gradient_clipping: float = 1.0
    zero_stage: int = 0
    # fp32 | bf16 | fp16 (fp16 needs a GPU)
    precision: str = "fp32"
    checkpoint_every: int = 500
    # Newest periodic checkpoints kept; the checkpoint at each stage end is always kept.
    keep_checkpoints: int = 3
    eval_every: int = 0
    eval_batches: int = 8
    # metrics.jsonl rows, W&B points and the progress bar every N steps (1: every step).
    log_every: int = bounded(1, low=1)
    seed: int = 42
    # Length bucketing: batches are formed inside windows of this many batches sorted by
    # length (0 or 1 = off: random batches, padded to their longest example).
    bucket_size: int = bounded(64, low=0)
    # Micro-batches per task prepared ahead in a background thread (0 = in the step itself).
    prefetch: int = bounded(2, low=0)
    # One forward per step for one sentence-level task plus every active token-level task.
    combine_token_tasks: bool = True
    # Compute the encoder's top layer only at the rows the batch's losses read (masked
    # tokens, [CLS]) when every task of the batch declares them; ernie_cpt.model.sparse_top.
    sparse_top_layer: bool = True
    # Per-task gradient norms and cosines every N steps (0 = off); see ernie_cpt.training.gradient_telemetry.
    grad_telemetry_every: int = 0
    grad_telemetry_scope: str = "last_layer"
    # CPU threads of torch (None = torch's default). On a shared or oversubscribed machine,
    # 1 thread per process can be many times faster than the default.
    threads: int | None = None
    # Halt after this many consecutive steps with a NaN/inf loss or gradient norm (each is
    # skipped: no update); 0 = never halt.
    max_nonfinite_steps: int = 10


SHARING_KINDS = ("hard", "soft", "cross_stitch", "mmoe", "cgc", "ple", "task_moe")


@dataclass(frozen=True)
class SharingConfig:
    """The multi-task architecture over the encoder's top layers (ernie_cpt.model.sharing)."""

    # hard | soft | cross_stitch | mmoe | cgc | ple | task_moe (hard: today's shared encoder)
    kind: str = "hard"
    # Encoder layers (from the top) made task-specific; the others stay one shared encoder.
    top_layers: int = bounded(1, low=1)
    # mmoe / task_moe: experts in the pool.
    experts: int = bounded(4, low=1)
    # cgc / ple: shared experts, and experts owned by each task.
    shared_experts: int = bounded(1, low=1)
    task_experts: int = bounded(1, low=1)
    # task_moe: experts each task routes through per layer.
    top_k: int = bounded(2, low=1)
    # soft: lambda of lambda * sum_t ||theta_t - mean theta||^2.
    penalty: float = bounded(0.01, low=0.0)
    # cross_stitch: initial weight of a task's own column (the rest split evenly).
    stitch_self: float = probability(0.9)
    # Seed of the experts' own initialisation (fresh encoders only).
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kind not in SHARING_KINDS:
            raise ValueError(
                f"sharing.kind must be one of {SHARING_KINDS}, got {self.kind!r}"
                f"{did_you_mean(self.kind, SHARING_KINDS)}"
            )
        if self.top_k > self.experts:
            raise ValueError(
                f"sharing.top_k ({self.top_k}) exceeds sharing.experts ({self.experts})"
            )


@dataclass(frozen=True)
class LoggingConfig:
    """Weights & Biases settings; the API key is never part of the config."""

    # offline | online | disabled
    wandb_mode: str = "offline"
    project: str = "ernie-cpt"
    entity: str | None = None
    run_name: str | None = None
    group: str | None = None
    job_type: str | None = None
    tags: list[str] = field(default_factory=list)
    progress_bar: bool = True


SECTIONS: dict[str, type] = {
    "model": ModelConfig,
    "tokenizer": TokenizerConfig,
    "data": DataConfig,
    "schedule": ScheduleConfig,
    "train": TrainConfig,
    "logging": LoggingConfig,
    "sharing": SharingConfig,
}


@dataclass(frozen=True)
class RunConfig:
    """The whole run. ``tasks`` maps task name -> its options, in introduction order."""

    model: ModelConfig = field(default_factory=ModelConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    data: DataConfig = field(default_factory=DataConfig)
    tasks: dict[str, dict[str, Any]] = field(default_factory=lambda: {"mlm": {}})
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    sharing: SharingConfig = field(default_factory=SharingConfig)

    def to_dict(self) -> dict[str, Any]:
        """A plain, JSON/YAML-serialisable dict of the whole config."""
        return dataclasses.asdict(self)

    def fingerprint(self, keys: Iterable[str] | None = None) -> str:
        """A short stable hash of the config, or of the listed dotted keys only."""
        flat = flatten(self.to_dict())
        if keys is not None:
            flat = {k: v for k, v in flat.items() if any(_under(k, p) for p in keys)}
        text = json.dumps(flat, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def _under(key: str, prefix: str) -> bool:
    return key == prefix or key.startswith(prefix + ".")


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flatten nested mappings into dotted keys: {"a": {"b": 1}} -> {"a.b": 1}."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, dotted + "."))
        else:
            out[dotted] = value
    return out


def build_dataclass(cls: type, values: Mapping[str, Any] | None, where: str) -> Any:
    """Build section ``cls`` from a mapping, exactly as plug-in settings are built
    (``schedules.options.build_settings``): unknown keys raise with a suggestion."""
    return build_settings(cls, values, where, ConfigError)


def parse_override(text: str) -> tuple[list[str], Any]:
    """Parse ``section.key=value``; the value is YAML (``1e-4``, ``[a, b]``, ``null``)."""
    if "=" not in text:
        raise ConfigError(f"--set expects key=value, got {text!r}")
    key, raw = text.split("=", 1)
    path = [p for p in key.strip().split(".") if p]
    if not path:
        raise ConfigError(f"--set has an empty key: {text!r}")
    return path, yaml.safe_load(raw) if raw.strip() else ""


def apply_overrides(tree: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Return a copy of ``tree`` with each ``a.b.c=value`` override set."""
    tree = json.loads(json.dumps(tree, default=str))
    for text in overrides:
        path, value = parse_override(text)
        node = tree
        for part in path[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"--set {text}: {part!r} is not a section")
            node = child
        node[path[-1]] = value
    return tree


def config_from_dict(tree: Mapping[str, Any]) -> RunConfig:
    """Validate a raw mapping and build the typed RunConfig."""
    tree = dict(tree or {})
    known = [*SECTIONS, "tasks"]
    for key in tree:
        if key not in known:
            raise ConfigError(f"unknown section {key!r}{did_you_mean(key, known)}")
    sections = {name: build_dataclass(cls, tree.get(name), name) for name, cls in SECTIONS.items()}
    tasks = tree.get("tasks", {"mlm": {}})
    if isinstance(tasks, list):  # a bare list of names is accepted too
        tasks = {name: {} for name in tasks}
    if not isinstance(tasks, Mapping) or not tasks:
        raise ConfigError("tasks: expected a non-empty mapping of task name -> options")
    tasks = {str(k): dict(v or {}) for k, v in tasks.items()}
    problems = cross_section_problems(sections)
    if problems:
        raise ConfigError("; ".join(problems))
    return RunConfig(tasks=tasks, **sections)


def cross_section_problems(sections: Mapping[str, Any]) -> list[str]:
    """Combinations of valid sections that cannot run together (``ernie-cpt check`` lists them)."""
    problems = []
    if sections["sharing"].kind != "hard" and sections["train"].zero_stage == 3:
        problems.append(
            f"sharing.kind {sections['sharing'].kind!r} needs ZeRO stage 0-2: every step touches "
            "the task-specific modules of tasks absent from it with a zero-weighted sum of their "
            "parameters, read outside those modules' own forward, where ZeRO-3 holds them "
            "partitioned; and adding tasks to a resumed run (new gates/columns) refuses ZeRO-3"
        )
    return problems


def read_yaml(path: str | Path) -> Any:
    """``yaml.safe_load`` of a config file; a missing or unparsable file is a ConfigError."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file {path}: no such file") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"config file {path}: cannot be read ({error})") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ConfigError(f"config file {path}: not valid YAML ({error})") from error


def load_config(path: str | Path | None, overrides: Iterable[str] = ()) -> RunConfig:
    """Read a YAML config (``yaml.safe_load``), apply ``--set`` overrides, validate."""
    tree: dict[str, Any] = {}
    if path is not None:
        loaded = read_yaml(path)
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{path}: the top level must be a mapping")
        tree = loaded or {}
    from ernie_cpt.init_source import resolve_init_from  # fills/refuses keys from init_from

    return config_from_dict(resolve_init_from(apply_overrides(tree, overrides)))


def save_config(config: RunConfig, path: str | Path) -> None:
    """Write the resolved config as YAML (it holds no secrets: there is no key field)."""
    Path(path).write_text(yaml.safe_dump(config.to_dict(), sort_keys=False), encoding="utf-8")


def diff_configs(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """List dotted keys whose values differ between two flattened config dicts.

    A key one side lacks and the other holds as None or an empty mapping or list (an optional
    section added since, e.g. ``schedule.sampling_options: {}``) is not a difference, so
    a run saved before the key existed still matches its config.
    """
    a, b = flatten(old), flatten(new)
    missing = object()

    def differs(key: str) -> bool:
        x, y = a.get(key, missing), b.get(key, missing)
        if missing in (x, y):
            other = y if x is missing else x
            return not (other is None or isinstance(other, (Mapping, list)) and not other)
        return x != y

    return sorted(k for k in set(a) | set(b) if differs(k))
