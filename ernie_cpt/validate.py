"""``ernie-cpt check``: every problem of a run, listed at once, before any expensive work.

``check`` reads the YAML config and ``--set`` overrides and reports, without preparing data,
loading weights or creating any directory:

- config sections: unknown sections and keys (with a "did you mean"), wrong types, values out
  of their declared ranges, unknown choices (precision, lr decay, splitter ...);
- tasks: unknown task names and every task's options (the task's ``Settings`` dataclass,
  built exactly as ``pretrain_tasks.build_task`` builds it);
- the schedule, built with a placeholder dataset size per task, and each stage's loss
  weighting (name, options, one set of options per method, ZeRO stage);
- ZeRO/precision combinations and sharing architectures at ZeRO-3;
- ``model.init_from`` and ``tokenizer.path``: directories that hold what they should and
  vocabularies that fit the checkpoint's embeddings (only ``config.json`` and tokenizer files
  are read, never weights);
- paths: the corpus exists, task option files exist, the output and cache directories can be
  created;
- resume: what ``--resume``/``--overwrite`` would do with the output directory, and whether
  the config may resume its newest checkpoint (tasks dropped, keys that must not change,
  process count, tasks added mid-stage). Only the checkpoint's ``trainer_state.json`` is read;
  its checksums are verified when training starts.

``train`` and ``prepare`` run exactly this first (``require``), so a typo costs no corpus pass.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ernie_cpt.config import (
    SECTIONS,
    ConfigError,
    RunConfig,
    apply_overrides,
    cross_section_problems,
    diff_configs,
    read_yaml,
)
from schedules.options import OptionsError, build_settings, did_you_mean

# Examples per task assumed when the schedule is built before any data exists.
PLACEHOLDER_SIZE = 1000
CHOICES: dict[str, tuple[str, ...]] = {
    "train.precision": ("fp32", "bf16", "fp16"),
    "train.lr_decay": ("linear", "cosine", "constant"),
    "train.grad_telemetry_scope": ("last_layer", "encoder"),
    "data.sentence_splitter": ("sentencex", "pysbd"),
    "data.on_empty_task": ("error", "skip"),
    "data.text_sample_by": ("document", "paragraph", "line"),
    "data.format": ("json", "parquet", "csv", "arrow", "text"),
    "logging.wandb_mode": ("offline", "online", "disabled"),
}
CORPUS_SUFFIXES = (".json", ".jsonl", ".ndjson", ".csv", ".parquet", ".arrow", ".txt", ".text")
COMPRESSION_SUFFIXES = (".gz", ".bz2", ".xz", ".zst", ".zstd")


class CheckFailed(ConfigError):
    """The run cannot start: ``problems`` lists every reason."""

    def __init__(self, problems: list[str], where: str = "") -> None:
        self.problems = problems
        head = f"{len(problems)} problem{'s' if len(problems) != 1 else ''}"
        super().__init__(
            f"{head}{' in ' + where if where else ''}:\n  - " + "\n  - ".join(problems)
        )


@dataclass
class CheckReport:
    """What ``check`` found: every problem, and (when there is none) the run it describes."""

    problems: list[str] = field(default_factory=list)
    config: RunConfig | None = None
    notes: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """No problem found."""
        return not self.problems


# ---------------------------------------------------------------- the config file


def settings_problems(cls: type, values: Any, where: str) -> tuple[Any, list[str]]:
    """Build settings dataclass ``cls`` from ``values``, collecting every problem.

    Each key is built alone first (unknown name, type, range: one message per key, worded as
    ``schedules.options.build_settings`` words it), then all together (cross-field checks).
    Returns (settings or None, problems).
    """
    if values is not None and not isinstance(values, Mapping):
        return None, [f"{where}: expected a mapping, got {values!r}"]
    problems = []
    for key, value in dict(values or {}).items():
        try:
            build_settings(cls, {key: value}, where)
        except OptionsError as error:
            problems.append(str(error))
    if problems:
        return None, problems
    try:
        return build_settings(cls, values, where), []
    except OptionsError as error:
        return None, [str(error)]


def read_tree(path: str | Path | None, overrides: Iterable[str], problems: list[str]) -> dict:
    """The raw config mapping with each ``--set`` applied (problems appended, never raised)."""
    tree: dict[str, Any] = {}
    if path is not None:
        try:
            loaded = read_yaml(path)
        except ConfigError as error:
            problems.append(str(error))
            loaded = None
        if loaded is not None and not isinstance(loaded, dict):
            problems.append(f"{path}: the top level must be a mapping")
        elif loaded:
            tree = loaded
    for text in overrides:
        try:
            tree = apply_overrides(tree, [text])
        except ConfigError as error:
            problems.append(str(error))
    return tree


def resolve_init(tree: dict[str, Any], problems: list[str]) -> dict[str, Any]:
    """``init_source.resolve_init_from`` (shape keys and tokenizer from the checkpoint)."""
    from ernie_cpt.init_source import resolve_init_from

    try:
        return resolve_init_from(tree)
    except ConfigError as error:
        problems.append(str(error))
        return tree


def task_problems(tasks: Any) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """Task names against the registry (plug-ins included) and each task's options."""
    from pretrain_tasks import available_tasks

    if isinstance(tasks, list):  # a bare list of names is accepted too
        tasks = {name: {} for name in tasks}
    if not isinstance(tasks, Mapping) or not tasks:
        return {"mlm": {}}, ["tasks: expected a non-empty mapping of task name -> options"]
    registry, problems, out = available_tasks(), [], {}
    for name, options in tasks.items():
        name = str(name)
        out[name] = dict(options) if isinstance(options, Mapping) else {}
        if name not in registry:
            names = sorted(registry)
            problems.append(f"unknown task {name!r}{did_you_mean(name, names)}; known: {names}")
            continue
        problems += settings_problems(registry[name].Settings, options, f"tasks.{name}")[1]
    return out, problems


def build_config(tree: Mapping[str, Any], problems: list[str]) -> RunConfig:
    """The RunConfig of ``tree``; a section with problems is replaced by its defaults so that
    the later checks still run (the problems make the report fail)."""
    known = [*SECTIONS, "tasks"]
    for key in tree:
        if key not in known:
            problems.append(f"unknown section {key!r}{did_you_mean(key, known)}")
    sections = {}
    for name, cls in SECTIONS.items():
        built, found = settings_problems(cls, tree.get(name), name)
        problems += found
        sections[name] = built if built is not None else cls()
    tasks, found = task_problems(tree.get("tasks", {"mlm": {}}))
    problems += found
    problems += cross_section_problems(sections)
    return RunConfig(tasks=tasks, **sections)


# ---------------------------------------------------------------- settings that interact


def choice_problems(config: RunConfig) -> list[str]:
    """String settings that must be one of a few names."""
    problems = []
    for dotted, choices in CHOICES.items():
        section, key = dotted.split(".")
        value = getattr(getattr(config, section), key)
        if value is not None and value not in choices:
            problems.append(
                f"{dotted} must be one of {list(choices)}, got {value!r}"
                f"{did_you_mean(value, choices)}"
            )
    return problems


def train_problems(config: RunConfig) -> list[str]:
    """ZeRO stage, precision and the settings that need full parameters."""
    train, problems = config.train, []
    if train.zero_stage not in (0, 1, 2, 3):
        problems.append(f"train.zero_stage must be 0, 1, 2 or 3, got {train.zero_stage}")
    if train.precision == "fp16" and not _has_gpu():
        problems.append("train.precision=fp16 needs a GPU; use bf16 or fp32 on CPU")
    if train.grad_telemetry_every and train.zero_stage == 3:
        problems.append("train.grad_telemetry_every needs full parameters: use ZeRO stage 0-2")
    for key in ("micro_batch_size", "gradient_accumulation_steps", "checkpoint_every"):
        if getattr(train, key) < 1:
            problems.append(f"train.{key} must be at least 1, got {getattr(train, key)}")
    if train.threads is not None and train.threads < 1:
        problems.append(f"train.threads must be at least 1, got {train.threads}")
    if config.data.heldout_fraction < 0 or config.data.heldout_fraction >= 1:
        problems.append(
            f"data.heldout_fraction must lie in [0, 1), got {config.data.heldout_fraction}"
        )
    return problems


def _has_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


def schedule_problems(config: RunConfig, problems: list[str]) -> Any:
    """The schedule with ``PLACEHOLDER_SIZE`` examples per task (None if it cannot be built).

    The arguments are those of ``training.build.schedule_from_config`` (which imports the
    model; this module must stay light).
    """
    from schedules import build_schedule
    from schedules.sampling import with_dataset_sizes

    s = config.schedule
    try:
        schedule = build_schedule(
            s.kind,
            list(config.tasks),
            s.iterations_per_task,
            s.stages,
            s.sampling,
            sampling_options=s.sampling_options,
            weighting=s.weighting,
            weighting_options=s.weighting_options,
        )
        return with_dataset_sizes(schedule, {t: PLACEHOLDER_SIZE for t in schedule.tasks})
    except (ValueError, KeyError, TypeError) as error:
        problems.append(f"schedule: {error}")
        return None


def weighting_problems(schedule: Any, zero_stage: int) -> list[str]:
    """Every stage's loss weighting: known name, valid options, one option set per method,
    and supported at the configured ZeRO stage."""
    from ernie_cpt.training.weighting import WEIGHTINGS, ZERO3_UNSUPPORTED

    problems: list[str] = []
    seen: dict[str, dict[str, Any]] = {}
    for index, stage in enumerate(schedule.stages):
        name, options = stage.weighting, dict(stage.weighting_options)
        where = f"stage {index} ({stage.name})"
        if name in seen:
            if seen[name] != options:
                problems.append(f"stages use {name!r} with different options; use one set per run")
            continue
        seen[name] = options
        if name not in WEIGHTINGS:
            names = sorted(WEIGHTINGS)
            problems.append(
                f"{where}: unknown loss weighting {name!r}{did_you_mean(name, names)}; known: {names}"
            )
            continue
        found = settings_problems(WEIGHTINGS[name].Settings, options, "weighting_options")[1]
        problems += [f"loss weighting {name!r}: {p}" for p in found]
        if zero_stage == 3 and name in ZERO3_UNSUPPORTED:
            problems.append(
                f"loss weighting {name!r} does not work at ZeRO-3: {ZERO3_UNSUPPORTED[name]}"
            )
    return problems


# ---------------------------------------------------------------- files and directories


def tokenizer_size(directory: Path) -> int | None:
    """Rows of embedding a tokenizer directory needs (largest token id + 1), or None."""
    vocab_txt, tokenizer_json = directory / "vocab.txt", directory / "tokenizer.json"
    if tokenizer_json.is_file():
        raw = json.loads(tokenizer_json.read_text(encoding="utf-8"))
        vocab = raw.get("model", {}).get("vocab", {})
        ids = list(vocab.values()) if isinstance(vocab, dict) else [len(vocab) - 1]
        ids += [t["id"] for t in raw.get("added_tokens", []) if isinstance(t, dict) and "id" in t]
        return max(ids) + 1 if ids else None
    if vocab_txt.is_file():
        with vocab_txt.open(encoding="utf-8") as handle:
            return sum(1 for _ in handle)
    return None


def tokenizer_problems(config: RunConfig) -> list[str]:
    """``tokenizer.path`` holds a tokenizer; with ``init_from`` its vocabulary fits the
    checkpoint's embeddings."""
    from ernie_cpt.init_source import holds_tokenizer

    path = config.tokenizer.path
    if path is None:
        return []
    if not Path(path).is_dir() or not holds_tokenizer(path):
        return [f"tokenizer.path {path}: not a directory holding tokenizer.json or vocab.txt"]
    init_from = config.model.init_from
    if not init_from or not (Path(init_from) / "config.json").is_file():
        return []
    try:
        rows = json.loads((Path(init_from) / "config.json").read_text(encoding="utf-8"))
        needed = tokenizer_size(Path(path))
    except (OSError, ValueError, KeyError, TypeError) as error:
        return [f"tokenizer.path {path}: unreadable tokenizer files ({error})"]
    vocab = rows.get("vocab_size") if isinstance(rows, dict) else None
    if isinstance(vocab, int) and needed is not None and needed > vocab:
        return [
            f"tokenizer.path {path} has {needed} tokens but model.init_from {init_from} has "
            f"{vocab} embedding rows: use the checkpoint's own tokenizer"
        ]
    return []


def _creatable(path: Path) -> str | None:
    """Why ``path`` cannot be used as a directory (None when it can), creating nothing."""
    if path.exists():
        if not path.is_dir():
            return "exists and is not a directory"
        return None if os.access(path, os.W_OK | os.X_OK) else "is not writable"
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        return f"cannot be created ({parent} is not a directory)"
    return None if os.access(parent, os.W_OK | os.X_OK) else f"cannot be created in {parent}"


def _looks_like_path(corpus: str) -> bool:
    """Mirrors ``data.corpus``: a hub dataset name is "owner/name" without a file suffix."""
    if corpus.startswith(("/", "./", "../", "~", ".\\")) or "\\" in corpus:
        return True
    suffixes = [s.lower() for s in Path(corpus).suffixes]
    if suffixes and suffixes[-1] in COMPRESSION_SUFFIXES:
        suffixes.pop()
    return corpus.count("/") > 1 or bool(suffixes and suffixes[-1] in CORPUS_SUFFIXES)


def path_problems(config: RunConfig, output_dir: Path | None, cache_dir: Path | None) -> list[str]:
    """The corpus, task option files, the output and cache directories."""
    problems = []
    corpus = config.data.corpus
    if corpus.startswith("builtin:"):
        if corpus != "builtin:wikipedia-sample":
            problems.append(
                f"data.corpus {corpus!r}: unknown built-in corpus; available: builtin:wikipedia-sample"
            )
    elif not Path(corpus).expanduser().exists() and _looks_like_path(corpus):
        problems.append(f"data.corpus {corpus}: no such file or folder")
    for task, options in config.tasks.items():
        for key, value in options.items():
            if key.endswith(("_file", "_path")) and isinstance(value, str) and value:
                if not Path(value).is_file():
                    problems.append(f"tasks.{task}.{key} {value}: no such file")
    directories = {"--output-dir": output_dir, "the prepared-data cache": cache_dir}
    for what, directory in directories.items():
        why = _creatable(Path(directory)) if directory is not None else None
        if why:
            problems.append(f"{what} {directory} {why}")
    return problems


def default_cache(config: RunConfig, cache_dir: str | Path | None) -> Path:
    """Where ``prepare_data`` will cache (mirrors ``data.prepare.default_cache_dir``)."""
    if cache_dir:
        return Path(cache_dir)
    if config.data.cache_dir:
        return Path(config.data.cache_dir)
    return Path(os.environ.get("ERNIE_CPT_CACHE", Path.home() / ".cache" / "ernie-cpt"))


# ---------------------------------------------------------------- resume


def _resume_candidate(root: Path) -> tuple[Path | None, dict[str, Any] | None]:
    """The checkpoint ``--resume auto`` would try first and its trainer state (small JSON)."""
    from ernie_cpt.training.checkpoint import STATE, TAG_PATTERN

    pointer = root / "latest"
    limit = None
    if pointer.is_file():
        match = TAG_PATTERN.match(pointer.read_text(encoding="utf-8", errors="replace").strip())
        limit = int(match.group(1)) if match else None
    found = (
        sorted(
            (p for p in root.iterdir() if p.is_dir() and TAG_PATTERN.match(p.name)), reverse=True
        )
        if root.is_dir()
        else []
    )
    for directory in found:
        if limit is not None and int(directory.name.split("-")[1]) > limit:
            continue
        try:
            return directory, json.loads((directory / STATE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
    return None, None


def run_dir_problems(run_dir: Path, resume: str, overwrite: bool, notes: dict) -> dict | None:
    """``run_dir.choose_checkpoint``'s refusals, without moving anything; returns the saved
    trainer state the run would resume (None: a fresh start)."""
    from ernie_cpt.training.run_dir import holds_run

    if resume not in ("auto", "must", "never"):
        raise CheckFailed([f"--resume must be auto, must or never, got {resume!r}"])
    if overwrite and resume == "must":
        raise CheckFailed(["--overwrite starts a new run; it cannot be used with --resume must"])
    if not run_dir.is_dir():
        notes["resume"] = "new run"
        return _fresh(resume, run_dir)
    if overwrite:
        notes["resume"] = (
            "new run (the old one is moved aside)" if holds_run(run_dir) else "new run"
        )
        return None
    if resume == "never" and holds_run(run_dir):
        raise CheckFailed(
            [
                f"{run_dir} already holds a run (metrics.jsonl or checkpoints): resume it with "
                "--resume auto, or pass --overwrite to move it aside and start a new run"
            ]
        )
    found, state = _resume_candidate(run_dir / "checkpoints") if resume != "never" else (None, None)
    if state is None:
        notes["resume"] = "new run"
        return _fresh(resume, run_dir)
    notes["resume"] = f"resumes {found} (step {state.get('train_state', {}).get('step')})"
    return state


def _fresh(resume: str, run_dir: Path) -> None:
    if resume == "must":
        raise CheckFailed([f"--resume must: no valid checkpoint under {run_dir / 'checkpoints'}"])
    return None


def resume_problems(saved: Mapping[str, Any], config: RunConfig, schedule: Any) -> list[str]:
    """Whether ``config`` may resume the checkpoint whose trainer state is ``saved``."""
    from ernie_cpt.training.resume import resume_relevant  # compares resume.RESUME_KEYS
    from schedules import Schedule

    old_tasks = list(saved.get("config", {}).get("tasks", {}))
    dropped = [t for t in old_tasks if t not in config.tasks]
    if dropped:
        return [f"cannot resume: the config drops tasks of the checkpoint: {dropped}"]
    added = [t for t in config.tasks if t not in old_tasks]
    ignored = ("schedule", *(f"tasks.{t}" for t in added)) if added else ()
    differing = diff_configs(
        resume_relevant(saved["config"], ignored), resume_relevant(config.to_dict(), ignored)
    )
    problems = []
    if differing:
        problems.append(
            "cannot resume: the config differs from the checkpoint's in: " + ", ".join(differing)
        )
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if saved.get("world_size") not in (None, world):
        problems.append(
            f"cannot resume: the checkpoint was written by {saved['world_size']} processes and "
            f"this run has {world}; resume with {saved['world_size']} processes"
        )
    step = saved.get("train_state", {}).get("step", 0)
    if added and schedule is not None and "schedule" in saved:
        old = Schedule.from_dict(saved["schedule"])
        if step not in old.boundaries or step not in schedule.boundaries:
            problems.append(
                f"cannot add tasks {added} at step {step}: resume from the end of a stage "
                f"(old stages end at {old.boundaries[1:]}, new at {schedule.boundaries[1:]})"
            )
    return problems


# ---------------------------------------------------------------- entry points


def check_config(
    config: RunConfig,
    output_dir: str | Path | None = None,
    *,
    resume: str = "auto",
    overwrite: bool = False,
    cache_dir: str | Path | None = None,
    notes: dict[str, Any] | None = None,
) -> list[str]:
    """Every problem of a built RunConfig with this output directory and resume mode."""
    notes = {} if notes is None else notes
    problems = choice_problems(config) + train_problems(config)
    schedule = schedule_problems(config, problems)
    if schedule is not None:
        problems += weighting_problems(schedule, config.train.zero_stage)
        notes["total_steps"] = schedule.total_steps
        notes["stages"] = [stage.name for stage in schedule.stages]
    problems += tokenizer_problems(config)
    run_dir = Path(output_dir) if output_dir is not None else None
    problems += path_problems(config, run_dir, default_cache(config, cache_dir))
    if run_dir is not None:
        try:
            saved = run_dir_problems(run_dir, resume, overwrite, notes)
        except CheckFailed as error:
            return problems + error.problems
        if saved is not None:
            problems += resume_problems(saved, config, schedule)
    return problems


def check(
    path: str | Path | None,
    overrides: Iterable[str] = (),
    output_dir: str | Path | None = None,
    *,
    resume: str = "auto",
    overwrite: bool = False,
    cache_dir: str | Path | None = None,
) -> CheckReport:
    """Every problem of config file ``path`` (+ overrides) for a run in ``output_dir``."""
    report = CheckReport()
    tree = read_tree(path, overrides, report.problems)
    tree = resolve_init(tree, report.problems)
    config = build_config(tree, report.problems)
    report.problems += check_config(
        config,
        output_dir,
        resume=resume,
        overwrite=overwrite,
        cache_dir=cache_dir,
        notes=report.notes,
    )
    report.config = None if report.problems else config
    return report


def require(
    path: str | Path | None,
    overrides: Iterable[str] = (),
    output_dir: str | Path | None = None,
    **options: Any,
) -> RunConfig:
    """``check``, raising ``CheckFailed`` (listing every problem) unless there is none."""
    report = check(path, overrides, output_dir, **options)
    if report.problems:
        raise CheckFailed(report.problems, str(path) if path else "")
    assert report.config is not None
    return report.config


def require_config(config: RunConfig, output_dir: str | Path | None = None, **options: Any) -> None:
    """``check_config`` for callers holding a RunConfig (``training.run_setup.setup``)."""
    problems = check_config(config, output_dir, **options)
    if problems:
        raise CheckFailed(problems)


__all__ = ["CheckFailed", "CheckReport", "check", "check_config", "require", "require_config"]
