"""Run logging: ``metrics.jsonl`` (one row per optimizer step) and W&B on rank 0.

W&B runs offline unless the user configures ``logging.wandb_mode: online``; files land in
the run directory. The API key is read by wandb itself from its own settings or the
environment and never passes through our config, logs or checkpoints.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ernie_cpt.config import LoggingConfig

SECRET_ENV = ("WANDB_API_KEY",)


class JsonlLog:
    """Append-only JSON lines; on resume, rows after the resumed step are dropped first."""

    def __init__(self, path: Path, resume_step: int | None = None) -> None:
        self.path = Path(path)
        if resume_step is not None and self.path.exists():
            kept = [
                line
                for line in self.path.read_text(encoding="utf-8").splitlines()
                if line.strip() and _complete(line) and json.loads(line)["step"] <= resume_step
            ]
            self.path.write_text("".join(f"{line}\n" for line in kept), encoding="utf-8")
        elif resume_step is None and self.path.exists():
            self.path.unlink()
        self.handle = self.path.open("a", encoding="utf-8")

    def write(self, row: Mapping[str, Any]) -> None:
        """Append one row and flush it to the OS (a kill loses at most the row in flight)."""
        self.handle.write(json.dumps(row, sort_keys=False) + "\n")
        self.handle.flush()

    def close(self) -> None:
        """Close the file."""
        self.handle.close()


def _complete(line: str) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:  # a line cut by a kill
        return False


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """All complete rows of a JSON-lines file."""
    if not Path(path).exists():
        return []
    return [
        json.loads(line)
        for line in Path(path).read_text(encoding="utf-8").splitlines()
        if _complete(line)
    ]


def flat_metrics(row: Mapping[str, Any]) -> dict[str, Any]:
    """A metrics.jsonl row in W&B's slash-separated names (``train/<task>/loss`` ...)."""
    out: dict[str, Any] = {"schedule/stage": row["stage"], "train/lr": row["lr"]}
    for task, loss in row["losses"].items():
        out[f"train/{task}/loss"] = loss
    for task, weight in row.get("weights", {}).items():
        out[f"weights/{task}"] = weight
    for task, norm in row.get("grad", {}).get("norms", {}).items():
        out[f"grad/{task}/norm"] = norm
    out.update(sharing_metrics(row.get("sharing", {})))
    out["throughput/tokens_per_s"] = row["tokens_per_s"]
    out["throughput/tokens"] = row["tokens"]
    out["schedule/task_id"] = row.get("task_id")
    return out


def sharing_metrics(sharing: Mapping[str, Any]) -> dict[str, float]:
    """A row's ``sharing`` telemetry (``MultiTaskModel.sharing_telemetry``) as W&B scalars:
    ``sharing/gate/<task>/<site>/e<i>`` (mean gate share of expert i) and ``.../entropy``,
    ``sharing/stitch/<layer>/<target>/<source>``, ``sharing/distance/<task>``."""
    out: dict[str, float] = {}
    for task, sites in sharing.get("gates", {}).items():
        for site, stats in sites.items():
            for i, share in enumerate(stats["mean"]):
                out[f"sharing/gate/{task}/{site}/e{i}"] = share
            out[f"sharing/gate/{task}/{site}/entropy"] = stats["entropy"]
    for layer, matrix in sharing.get("stitch", {}).items():
        for target, row in matrix.items():
            for source, value in row.items():
                out[f"sharing/stitch/{layer}/{target}/{source}"] = value
    for task, distance in sharing.get("distance", {}).items():
        out[f"sharing/distance/{task}"] = distance
    return out


class WandbRun:
    """A thin wrapper: a wandb run on rank 0 (or nothing when disabled / other ranks)."""

    def __init__(
        self,
        config: LoggingConfig,
        run_dir: Path,
        run_config: Mapping[str, Any],
        run_id: str,
        enabled: bool,
    ) -> None:
        self.run = None
        if not enabled or config.wandb_mode == "disabled":
            return
        import wandb

        if config.wandb_mode not in ("offline", "online"):
            raise ValueError(
                f"logging.wandb_mode must be offline, online or disabled, got {config.wandb_mode!r}"
            )
        os.environ["WANDB_MODE"] = config.wandb_mode  # the argument alone still does DNS look-ups
        os.environ.setdefault("WANDB_DIR", str(run_dir))
        for var, sub in (
            ("WANDB_CACHE_DIR", "cache"),
            ("WANDB_CONFIG_DIR", "config"),
            ("WANDB_DATA_DIR", "data"),
        ):
            os.environ.setdefault(var, str(run_dir / "wandb" / sub))
        os.environ.setdefault("WANDB_SILENT", "true")
        self.run = wandb.init(
            project=config.project,
            entity=config.entity,
            name=config.run_name or run_dir.name,
            group=config.group,
            job_type=config.job_type,
            tags=list(config.tags),
            dir=str(run_dir),
            id=run_id,
            resume="allow",
            config=scrub(run_config),
            settings=wandb.Settings(x_disable_stats=False, console="off"),
        )
        self.run.define_metric("train/*", step_metric="trainer/step")
        self.run.define_metric("eval/*", step_metric="trainer/step")
        self.run.define_metric("sharing/*", step_metric="trainer/step")

    def log(self, values: Mapping[str, Any], step: int) -> None:
        """Log values at an optimizer step."""
        if self.run is not None:
            self.run.log({**values, "trainer/step": step})

    def log_matrix(self, name: str, matrix: Mapping[str, Mapping[str, float]], step: int) -> None:
        """Log a square task x task matrix (e.g. gradient cosines) as a ``wandb.Table``."""
        if self.run is None:
            return
        import wandb

        tasks = list(matrix)
        rows = [[a, *(matrix[a][b] for b in tasks)] for a in tasks]
        self.run.log({name: wandb.Table(columns=["task", *tasks], data=rows), "trainer/step": step})

    def finish(self) -> None:
        """Close the run (syncs offline files to disk)."""
        if self.run is not None:
            self.run.finish()


def scrub(tree: Any) -> Any:
    """Drop any value equal to a secret from the environment (defence in depth)."""
    secrets = {os.environ[v] for v in SECRET_ENV if os.environ.get(v)}
    if isinstance(tree, Mapping):
        return {k: scrub(v) for k, v in tree.items()}
    if isinstance(tree, list):
        return [scrub(v) for v in tree]
    return "***" if isinstance(tree, str) and tree in secrets else tree
