"""The ``ernie-cpt`` command: train, prepare, export, tasks, schedule."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from ernie_cpt.config import ConfigError, RunConfig, load_config


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


def _load(args: argparse.Namespace) -> RunConfig:
    path = args.config_option or args.config
    if path is None:
        raise ConfigError(
            "a config file is needed: ernie-cpt COMMAND CONFIG (e.g. configs/demo.yaml)"
        )
    return load_config(path, args.overrides)


def cmd_train(args: argparse.Namespace) -> int:
    """Run or resume training."""
    from ernie_cpt.training.loop import RunOptions, train

    config = _load(args)
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
        print(json.dumps(summary, indent=2))
    return summary["exit_code"]  # 143 / 130 after a checkpoint on SIGTERM / SIGINT


def cmd_prepare(args: argparse.Namespace) -> int:
    """Build (or find cached) per-task example datasets and print the data report."""
    from ernie_cpt.data.prepare import parse_shard, prepare_data

    config = _load(args)
    shard = parse_shard(args.shard) if args.shard else None
    cache_dir = Path(args.cache_dir) if args.cache_dir else None
    data = prepare_data(config, cache_dir=cache_dir, shard=shard)
    print(json.dumps(data.report, indent=2))
    print(f"prepared data: {data.root}", file=sys.stderr)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """Export a run's newest valid checkpoint as a Hugging Face directory."""
    from ernie_cpt.export import export_run

    out = export_run(
        Path(args.run_dir),
        Path(args.out),
        Path(args.checkpoint) if args.checkpoint else None,
        overwrite=args.overwrite,
    )
    print(out)
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
        print(f"{name:<{width}}  {family:<15}  {level:<8}  {doc}")
    return 0


def cmd_schedule(args: argparse.Namespace) -> int:
    """Print the stage table of the configured schedule."""
    from ernie_cpt.training.loop import schedule_from_config
    from schedules.table import format_stage_table

    print(format_stage_table(schedule_from_config(_load(args))))
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

    path = args.config_option or args.config
    if path is None:
        raise ConfigError("a config file is needed: ernie-cpt compare CONFIG --schedules ...")
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
            args.overrides,
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
        )
    except RunFailed as error:
        print(f"ernie-cpt: error: {error}", file=sys.stderr)
        return 1
    from ernie_cpt.experiments.report import summary_table

    print("\n".join(summary_table(summary)))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Fine-tune an exported encoder on labelled data with k seeds; print the median."""
    from ernie_cpt.experiments.finetune import evaluate_model
    from ernie_cpt.experiments.report import json_safe

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
    print(text)
    return 0


def cmd_finetune(args: argparse.Namespace) -> int:
    """Fine-tune an exported encoder on one or more tasks (MT-DNN with --multitask)."""
    from ernie_cpt.experiments.glue import resolve_all
    from ernie_cpt.experiments.mtdnn import MultitaskConfig, finetune_tasks
    from ernie_cpt.experiments.report import json_safe

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
    print(text)
    return 0


def _finetune_parser(sub: argparse._SubParsersAction) -> None:
    finetune = sub.add_parser(
        "finetune",
        help="fine-tune an exported model on one or more tasks (MT-DNN with --multitask)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
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
    finetune.set_defaults(func=cmd_finetune)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    parser = argparse.ArgumentParser(prog="ernie-cpt", description=__doc__)
    parser.add_argument(
        "--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train (or resume) a run")
    _config_args(train)
    train.add_argument("--output-dir", required=True, help="run directory")
    train.add_argument(
        "--max-steps", type=int, default=None, help="stop after this many steps (smoke runs)"
    )
    train.add_argument("--resume", choices=("auto", "must", "never"), default="auto")
    train.add_argument(
        "--overwrite",
        action="store_true",
        help="start a new run in a used directory (the old one moves to DIR.old-<time>)",
    )
    train.add_argument(
        "--trust-checkpoint",
        action="store_true",
        help="UNSAFE: unpickle checkpoint files that are not weights-only (old runs you made)",
    )
    train.set_defaults(func=cmd_train)

    prepare = sub.add_parser("prepare", help="prepare per-task datasets and print the data report")
    _config_args(prepare)
    prepare.add_argument("--cache-dir", default=None)
    prepare.add_argument(
        "--shard", default=None, help="i/N: prepare only the i-th of N parts (one job each)"
    )
    prepare.set_defaults(func=cmd_prepare)

    export = sub.add_parser("export", help="export a run as a Hugging Face model directory")
    export.add_argument("run_dir")
    export.add_argument("out")
    export.add_argument("--checkpoint", default=None, help="a specific checkpoint directory")
    export.add_argument(
        "--overwrite",
        action="store_true",
        help="replace OUT when it holds a previous export (anything else is never replaced)",
    )
    export.set_defaults(func=cmd_export)

    tasks = sub.add_parser("tasks", help="list pre-training tasks")
    tasks.set_defaults(func=cmd_tasks)

    schedule = sub.add_parser("schedule", help="print the stage table of a config's schedule")
    _config_args(schedule)
    schedule.set_defaults(func=cmd_schedule)

    compare = sub.add_parser(
        "compare", help="compare schedules over seeds at matched compute (resumable)"
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
    compare.add_argument(
        "--threads", type=int, default=None, help="OMP_NUM_THREADS of the training runs"
    )
    compare.add_argument("--no-wandb", action="store_true", help="skip the W&B summary run")
    compare.add_argument(
        "--progress-every", type=float, default=15.0, help="seconds between progress lines"
    )
    compare.set_defaults(func=cmd_compare)

    evaluate = sub.add_parser(
        "evaluate", help="fine-tune an exported model on labelled data (median over seeds)"
    )
    evaluate.add_argument("model_dir", help="an export directory (AutoModel-loadable)")
    evaluate.add_argument("--data", required=True, help="labelled TSV (with header) or JSONL")
    evaluate.add_argument("--dev", default=None, help="dev file (default: hold out a fraction)")
    evaluate.add_argument("--text-fields", default=None, help="e.g. sentence1,sentence2")
    evaluate.add_argument("--label-field", default=None)
    evaluate.add_argument("--out", default=None, help="also write the result JSON here")
    _finetune_args(evaluate)
    evaluate.set_defaults(func=cmd_evaluate)
    _finetune_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``ernie-cpt`` console script."""
    _offline_defaults()
    args = build_parser().parse_args(argv)
    if args.local_rank is not None:  # the deepspeed launcher passes --local_rank
        os.environ.setdefault("LOCAL_RANK", str(args.local_rank))
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    for noisy in ("DeepSpeed", "deepspeed", "datasets", "httpx", "urllib3", "bm25s"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        return args.func(args)
    except (ConfigError, ValueError, FileNotFoundError) as error:
        print(f"ernie-cpt: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
