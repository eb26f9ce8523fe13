"""The ``ernie-cpt`` command: check, train, prepare, export, tasks, schedule, compare,
evaluate, finetune.

stdout holds only a command's result (JSON where it is data: ``ernie-cpt train ... >
summary.json`` works); progress bars and ernie-cpt's messages go to stderr; the libraries'
chatter goes to the run's log file (``<run>/run.log``) unless ``-v``. A user error (the
project's ``ErnieCptError``, or a plug-in's ``OptionsError``) is one ``ernie-cpt: error:``
message and exit status 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from ernie_cpt import __version__, logs
from ernie_cpt.config import ConfigError, RunConfig
from ernie_cpt.errors import ErnieCptError, MissingInputError
from schedules.options import OptionsError

USER_ERRORS = (ErnieCptError, OptionsError)
_RESULT: dict[str, TextIO] = {}  # the real stdout while a command runs (see main)


def emit(text: str) -> None:
    """Write a command's result to stdout (everything else that prints goes to stderr)."""
    stream = _RESULT.get("stdout", sys.stdout)
    stream.write(text + "\n")
    stream.flush()


def _offline_defaults() -> None:
    """No machine of ours reaches a hub: never wait on network time-outs by default."""
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        os.environ.setdefault(var, "1")
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _config_args(parser: argparse.ArgumentParser, required: bool = True) -> None:
    parser.add_argument("config", nargs="?", help="YAML config file")
    parser.add_argument(
        "--config", dest="config_option", help="YAML config file (same as the positional)"
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. --set train.lr=3e-4 (repeatable)",
    )


def _config_path(args: argparse.Namespace) -> str:
    path = args.config_option or args.config
    if path is None:
        raise ConfigError(
            f"a config file is needed: ernie-cpt {args.command} CONFIG (e.g. configs/demo.yaml)"
        )
    return path


def _overrides(args: argparse.Namespace) -> list[str]:
    """``--set`` values, plus ``--threads`` / ``--cache-dir`` as the config keys they set."""
    extra = []
    if getattr(args, "threads", None):
        extra.append(f"train.threads={args.threads}")
    if getattr(args, "cache_dir", None):
        extra.append(f"data.cache_dir={args.cache_dir}")
    return [*args.overrides, *extra]


def _load(args: argparse.Namespace, **check: Any) -> RunConfig:
    """``validate.require``: the config with every problem listed at once, or CheckFailed."""
    from ernie_cpt.validate import require

    return require(_config_path(args), _overrides(args), **check)


def cmd_check(args: argparse.Namespace) -> int:
    """Validate a config (and a run directory) before any expensive work; print what it runs."""
    from ernie_cpt.validate import CheckFailed, check

    path = _config_path(args)
    report = check(
        path, _overrides(args), args.output_dir, resume=args.resume, overwrite=args.overwrite
    )
    if report.problems:
        raise CheckFailed(report.problems, path)
    emit(json.dumps({"ok": True, "config": path, **report.notes}, indent=2))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    """Run or resume training."""
    config = _load(args, output_dir=args.output_dir, resume=args.resume, overwrite=args.overwrite)
    rank = os.environ.get("RANK", "0")  # one log per process of a multi-process run
    logs.attach_file(Path(args.output_dir) / ("run.log" if rank == "0" else f"run-rank{rank}.log"))
    logs.tame_libraries(deepspeed=True)
    from ernie_cpt.training.loop import RunOptions, train

    options = RunOptions(
        resume=args.resume,
        overwrite=args.overwrite,
        trust_checkpoint=args.trust_checkpoint,
        progress=config.logging.progress_bar,
    )
    try:
        summary = train(config, Path(args.output_dir), max_steps=args.max_steps, options=options)
    except KeyboardInterrupt:  # Ctrl-C before the loop (data preparation): no traceback
        print("ernie-cpt: interrupted", file=sys.stderr)
        return 130
    if int(os.environ.get("RANK", "0")) == 0:
        _note_early_stop(summary)
        emit(json.dumps(summary, indent=2))
    return summary["exit_code"]  # 143 / 130 after a checkpoint on SIGTERM / SIGINT


def _note_early_stop(summary: dict[str, Any]) -> None:
    """A run that stopped before its schedule's end says so (and that nothing was exported)."""
    if summary["steps"] >= summary["total_steps"]:
        return
    summary["stopped_early"] = True
    summary["exported"] = False
    why = summary.get("stopped_by", "--max-steps")
    print(
        f"ernie-cpt: stopped early at step {summary['steps']} of {summary['total_steps']} "
        f"({why}): checkpoint saved, nothing exported; run the same command without "
        "--max-steps to continue",
        file=sys.stderr,
    )


def cmd_prepare(args: argparse.Namespace) -> int:
    """Build (or find cached) per-task example datasets and print the data report."""
    config = _load(args)
    from ernie_cpt.data.prepare import default_cache_dir, parse_shard, prepare_data

    shard = parse_shard(args.shard) if args.shard else None
    logs.attach_file(default_cache_dir(config) / "prepare.log")
    logs.tame_libraries()
    data = prepare_data(config, shard=shard)
    emit(json.dumps(data.report, indent=2))
    print(f"prepared data: {data.root}", file=sys.stderr)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """Export a run's newest valid checkpoint as a Hugging Face directory."""
    from ernie_cpt.export import export_run

    if Path(args.run_dir).is_dir():  # a missing one is export_run's error, not created here
        logs.attach_file(Path(args.run_dir) / "run.log")
    logs.tame_libraries()
    out = export_run(
        Path(args.run_dir),
        Path(args.out),
        Path(args.checkpoint) if args.checkpoint else None,
        overwrite=args.overwrite,
    )
    emit(str(out))
    return 0


def cmd_tasks(args: argparse.Namespace) -> int:
    """List registered tasks with family and level."""
    from pretrain_tasks import available_tasks

    rows = [
        (name, cls.family, cls.level, (cls.__doc__ or "").strip().splitlines()[0])
        for name, cls in available_tasks().items()
    ]
    width = max(len(r[0]) for r in rows)
    for name, family, level, doc in rows:
        emit(f"{name:<{width}}  {family:<15}  {level:<8}  {doc}")
    return 0


def cmd_schedule(args: argparse.Namespace) -> int:
    """Print the stage table of the configured schedule."""
    from ernie_cpt.training.loop import schedule_from_config
    from schedules.table import format_stage_table

    emit(format_stage_table(schedule_from_config(_load(args))))
    return 0


def _finetune_args(parser: argparse.ArgumentParser, prefix: str = "") -> None:
    """Fine-tuning settings of ``evaluate`` (and of ``compare --downstream``, prefixed)."""
    from ernie_cpt.experiments.finetune import TASK_TYPES, FinetuneConfig

    d = FinetuneConfig()
    add = parser.add_argument
    add(f"--{prefix}seeds", type=int, default=5, help="fine-tuning seeds (median reported)")
    add(
        f"--{prefix}task-type",
        choices=TASK_TYPES,
        default="auto",
        help="auto: regression for non-integer labels, pair with a second text, ranking with a "
        "query column",
    )
    add(f"--{prefix}epochs", type=int, default=d.epochs, help="passes over each task's data")
    add(f"--{prefix}lr", type=float, default=d.lr, help="peak AdamW learning rate")
    add(f"--{prefix}batch-size", type=int, default=d.batch_size, help="examples per batch")
    add(
        f"--{prefix}max-length",
        type=int,
        default=d.max_length,
        help="tokens per example (truncated)",
    )
    add(f"--{prefix}dev-fraction", type=float, default=d.dev_fraction, help="held out as dev")
    add(f"--{prefix}task-id", type=int, default=d.task_id, help="task embedding id of inputs")
    if prefix:  # unprefixed, --threads is one of every subcommand's common flags
        add(f"--{prefix}threads", type=int, default=None, help="torch CPU threads")


def _finetune_config(args: argparse.Namespace, prefix: str = "") -> object:
    from ernie_cpt.experiments.finetune import FinetuneConfig

    get = lambda name: getattr(args, prefix.replace("-", "_") + name)  # noqa: E731
    return FinetuneConfig(
        epochs=get("epochs"),
        lr=get("lr"),
        batch_size=get("batch_size"),
        max_length=get("max_length"),
        dev_fraction=get("dev_fraction"),
        task_id=get("task_id"),
        threads=get("threads"),
    )


def cmd_compare(args: argparse.Namespace) -> int:
    """Train every schedule x seed (resumable), evaluate, write report.md and summary.json."""
    from ernie_cpt.experiments.compare import (
        DownstreamPlan,
        RunFailed,
        compare,
        parse_schedules,
        parse_sharing,
    )
    from ernie_cpt.experiments.mtdnn import MultitaskConfig

    path = _config_path(args)
    logs.attach_file(Path(args.output_dir) / "compare.log")
    logs.tame_libraries()
    downstream = None
    if args.downstream:
        downstream = DownstreamPlan(
            tuple(args.downstream),
            args.downstream_seeds,
            args.downstream_task_type,
            _finetune_config(args, "downstream-"),
            stages=args.downstream_stages,
            multitask=MultitaskConfig(then_single=args.downstream_then_single)
            if args.downstream_multitask
            else None,
        )
    try:
        summary = compare(
            path,
            [*args.overrides, *([f"data.cache_dir={args.cache_dir}"] if args.cache_dir else [])],
            parse_schedules(args.schedules),
            args.seeds,
            Path(args.output_dir),
            group=args.group,
            metric=args.metric,
            downstream=downstream,
            wandb_summary=not args.no_wandb,
            interval=args.progress_every,
            threads=args.threads,
            sharing=parse_sharing(args.sharing),
            baseline=args.baseline or "",
        )
    except RunFailed as error:
        print(f"ernie-cpt: error: {error}", file=sys.stderr)
        return 1
    from ernie_cpt.experiments.report import summary_table

    emit("\n".join(summary_table(summary)))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Fine-tune an exported encoder on labelled data with k seeds; print the median."""
    from ernie_cpt.experiments.finetune import evaluate_model
    from ernie_cpt.experiments.report import json_safe

    for flag, path in (("--data", args.data), ("--dev", args.dev)):
        if path is not None and not Path(path).is_file():
            raise MissingInputError(f"{flag} {path}: no such file")
    logs.tame_libraries()
    result = evaluate_model(
        args.model_dir,
        args.data,
        dev_path=args.dev,
        task_type=args.task_type,
        seeds=args.seeds,
        config=_finetune_config(args),
        text_fields=args.text_fields.split(",") if args.text_fields else None,
        label_field=args.label_field,
        progress=True,
    )
    text = json.dumps(json_safe(result), indent=2)
    if args.out:
        Path(args.out).write_text(text + "\n", encoding="utf-8")
    emit(text)
    return 0


def cmd_finetune(args: argparse.Namespace) -> int:
    """Fine-tune an exported encoder on one or more tasks (MT-DNN with --multitask)."""
    from ernie_cpt.experiments.glue import resolve_all
    from ernie_cpt.experiments.mtdnn import MultitaskConfig, finetune_tasks
    from ernie_cpt.experiments.report import json_safe

    logs.attach_file(Path(args.output_dir) / "run.log")
    logs.tame_libraries()
    config = _finetune_config(args)
    tasks = resolve_all(
        args.data,
        task_type=args.task_type,
        dev_fraction=config.dev_fraction,
        split_seed=config.split_seed,
    )
    mt = MultitaskConfig(
        multitask=args.multitask,
        then_single=args.then_single,
        temperature=args.temperature,
        ranking_gamma=args.ranking_gamma,
        shared_task_id=args.shared_task_id,
        device=args.device,
    )
    result = finetune_tasks(
        args.model_dir,
        tasks,
        seeds=args.seeds,
        config=config,
        mt=mt,
        output_dir=args.output_dir,
        progress=not args.no_progress,
    )
    text = json.dumps(json_safe(result), indent=2)
    if args.out:
        Path(args.out).write_text(text + "\n", encoding="utf-8")
    emit(text)
    return 0


def _finetune_parser(sub: argparse._SubParsersAction) -> None:
    finetune = _command(
        sub,
        "finetune",
        "fine-tune an exported model on one or more tasks (MT-DNN with --multitask)",
        cmd_finetune,
    )
    add = finetune.add_argument
    add("model_dir", help="an export directory (AutoModel-loadable)")
    add(
        "--data",
        action="append",
        required=True,
        metavar="[NAME=]WHERE",
        help="a labelled TSV/JSONL, a folder with train/dev files, a GLUE task folder or "
        "root, or a hub name (glue/sst2); repeatable, one per task",
    )
    add("--output-dir", required=True, help="per-seed results and result.json (resumable)")
    add("--multitask", action="store_true", help="MT-DNN: one shared encoder, a head per task")
    add("--then-single", action="store_true", help="then fine-tune each task alone from it")
    add("--temperature", type=float, default=1.0, help="task sampling ~ batches^(1/T)")
    add("--ranking-gamma", type=float, default=1.0, help="gamma of the listwise ranking loss")
    add("--shared-task-id", action="store_true", help="every task uses --task-id")
    add("--out", default=None, help="also write the result JSON here")
    add("--no-progress", action="store_true", help="no progress bars on stderr")
    add("--device", default="auto", help="auto (cuda when available), cpu, cuda, cuda:1 ...")
    _finetune_args(finetune)


def _common_flags() -> argparse.ArgumentParser:
    """-v, --threads and --cache-dir: the same on every subcommand."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        default=argparse.SUPPRESS,
        help="debug logging, and the libraries' messages on stderr too (default: off: they "
        "go to the log file)",
    )
    common.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (sets train.threads; for compare, each run's OMP_NUM_THREADS)",
    )
    common.add_argument(
        "--cache-dir",
        default=None,
        help="prepared-data cache (sets data.cache_dir; default: $ERNIE_CPT_CACHE or "
        "~/.cache/ernie-cpt)",
    )
    return common


_COMMON = _common_flags()


def _command(
    sub: argparse._SubParsersAction, name: str, help: str, func: Any
) -> argparse.ArgumentParser:
    """A subcommand with the common flags, its defaults shown in --help."""
    parser = sub.add_parser(
        name,
        help=help,
        description=help,
        parents=[_COMMON],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.set_defaults(func=func)
    return parser


def _run_dir_args(parser: argparse.ArgumentParser) -> None:
    """--resume / --overwrite, read alike by train and check."""
    parser.add_argument(
        "--resume",
        choices=("auto", "must", "never"),
        default="auto",
        help="auto: continue from the newest valid checkpoint if there is one; must: refuse "
        "to start without one; never: refuse a directory holding a run",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="start a new run in a used directory (the old one moves to DIR.old-<time>)",
    )


def _train_parsers(sub: argparse._SubParsersAction) -> None:
    check = _command(
        sub, "check", "validate a config and run directory (every problem at once)", cmd_check
    )
    _config_args(check)
    check.add_argument("--output-dir", default=None, help="the run directory to check")
    _run_dir_args(check)

    train = _command(sub, "train", "train (or resume) a run; prints a JSON summary", cmd_train)
    _config_args(train)
    train.add_argument("--output-dir", required=True, help="run directory")
    train.add_argument(
        "--max-steps",
        type=int,
        default=None,
        help="stop after this many steps with a checkpoint and no export (smoke runs)",
    )
    _run_dir_args(train)
    train.add_argument(
        "--trust-checkpoint",
        action="store_true",
        help="UNSAFE: unpickle checkpoint files that are not weights-only (old runs you made)",
    )

    prepare = _command(
        sub, "prepare", "prepare per-task datasets and print the data report", cmd_prepare
    )
    _config_args(prepare)
    prepare.add_argument(
        "--shard", default=None, help="i/N: prepare only the i-th of N parts (one job each)"
    )

    export = _command(sub, "export", "export a run as a Hugging Face model directory", cmd_export)
    export.add_argument("run_dir", help="a run directory (train --output-dir)")
    export.add_argument("out", help="the export directory to write")
    export.add_argument("--checkpoint", default=None, help="a specific checkpoint directory")
    export.add_argument(
        "--overwrite",
        action="store_true",
        help="replace OUT when it holds a previous export (anything else is never replaced)",
    )

    _command(sub, "tasks", "list pre-training tasks", cmd_tasks)
    schedule = _command(
        sub, "schedule", "print the stage table of a config's schedule", cmd_schedule
    )
    _config_args(schedule)


def _compare_parser(sub: argparse._SubParsersAction) -> None:
    compare = _command(
        sub,
        "compare",
        "compare schedules over seeds at matched compute (resumable)",
        cmd_compare,
    )
    _config_args(compare)
    compare.add_argument("--output-dir", required=True, help="comparison directory")
    compare.add_argument(
        "--schedules", default="continual,multitask,cmtl", help="comma-separated schedule kinds"
    )
    compare.add_argument(
        "--sharing",
        default="",
        help="comma-separated sharing kinds crossed with the schedules (e.g. hard,mmoe,ple); "
        "default: the config's sharing.kind only",
    )
    compare.add_argument("--seeds", type=int, default=2, help="seeds per schedule")
    compare.add_argument(
        "--baseline",
        default=None,
        metavar="TASK",
        help="also train TASK alone (e.g. mlm) per seed for the schedules' total steps; "
        "its held-out score and downstream results are the report's baseline row",
    )
    compare.add_argument("--group", default=None, help="W&B group (default: from the directory)")
    compare.add_argument(
        "--metric", default="accuracy", help="held-out metric used as the score R[i][j]"
    )
    compare.add_argument(
        "--downstream",
        action="append",
        default=[],
        metavar="[NAME=]WHERE",
        help="downstream data as finetune's --data (labelled file, GLUE folder or root); "
        "every final model is fine-tuned on it (repeatable)",
    )
    compare.add_argument(
        "--downstream-multitask",
        action="store_true",
        help="fine-tune on all downstream tasks at once (MT-DNN) instead of each alone",
    )
    compare.add_argument(
        "--downstream-then-single",
        action="store_true",
        help="with --downstream-multitask: then fine-tune each task alone from it",
    )
    _finetune_args(compare, prefix="downstream-")
    compare.add_argument(
        "--downstream-stages",
        action="store_true",
        help="also evaluate each stage's end checkpoint (raise train.keep_checkpoints to keep them)",
    )
    compare.add_argument("--no-wandb", action="store_true", help="skip the W&B summary run")
    compare.add_argument(
        "--progress-every", type=float, default=15.0, help="seconds between progress lines"
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    parser = argparse.ArgumentParser(prog="ernie-cpt", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--version", action="version", version=f"ernie-cpt {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _train_parsers(sub)
    _compare_parser(sub)
    evaluate = _command(
        sub,
        "evaluate",
        "fine-tune an exported model on one labelled set (median over seeds)",
        cmd_evaluate,
    )
    evaluate.add_argument("model_dir", help="an export directory (AutoModel-loadable)")
    evaluate.add_argument("--data", required=True, help="labelled TSV (with header) or JSONL")
    evaluate.add_argument("--dev", default=None, help="dev file (default: hold out a fraction)")
    evaluate.add_argument("--text-fields", default=None, help="e.g. sentence1,sentence2")
    evaluate.add_argument("--label-field", default=None, help="the label column")
    evaluate.add_argument("--out", default=None, help="also write the result JSON here")
    _finetune_args(evaluate)
    _finetune_parser(sub)
    return parser


def _apply_common(args: argparse.Namespace) -> None:
    """--threads and --cache-dir for what the config does not reach (libraries, subprocesses)."""
    if args.threads:
        os.environ["OMP_NUM_THREADS"] = str(args.threads)
        if "torch" in sys.modules:
            sys.modules["torch"].set_num_threads(args.threads)
    if args.cache_dir:
        os.environ["ERNIE_CPT_CACHE"] = str(args.cache_dir)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``ernie-cpt`` console script."""
    _offline_defaults()
    args = build_parser().parse_args(argv)
    if args.local_rank is not None:  # the deepspeed launcher passes --local_rank
        os.environ.setdefault("LOCAL_RANK", str(args.local_rank))
    logs.setup(verbose=args.verbose)
    _apply_common(args)
    _RESULT["stdout"] = sys.stdout
    try:  # what libraries print goes to the log: stdout is the result's
        with contextlib.redirect_stdout(logs.PrintedLines()):  # type: ignore[arg-type]
            return args.func(args)
    except USER_ERRORS as error:
        print(f"ernie-cpt: error: {error}", file=sys.stderr)
        return 2
    finally:
        _RESULT.clear()


if __name__ == "__main__":
    raise SystemExit(main())
