"""Training-step benchmarks on CPU, side by side in one process (printed ratios, not tests).

1. MLM step: ernie-cpt's ``train_step`` (MLM only) against two Hugging Face loops over the
   same examples in the same batches (same index order): the *fair* one, whose
   ``BertForMaskedLM`` decodes the masked positions only (as ernie-cpt does), and the plain
   one (``model(**batch).loss``: vocabulary logits at every position); and, where the
   checkout has it, ``hf-sparse-top``: hf-fair with BERT's top layer also computed at the
   masked rows only (ernie-cpt's ``sparse_top_layer``, its default), the same arithmetic
   as ernie-cpt's step. Rounds alternate, the side that starts rotates; throughput is real
   (non-pad) tokens per process-CPU second.
2. Mixture: the eight-task stage (the config's last stage) with every task in turn, each
   sentence task carrying its attached token tasks, against MLM-only steps of the same run:
   CPU seconds per real token, ratio mixture / MLM-only.
3. Padding: per task, the share of batch cells that are padding in the batches the steps
   above built (recorded at collate time).
4. Host syncs: per micro-batch of an MLM step and of a sentence-task step, the calls that
   read a device value on the host (``Tensor.item/__float__/__int__/__bool__/tolist/
   nonzero`` and boolean-mask indexing), counted in the training thread outside collation
   (collation is host work; on a GPU it never touches the device).

It uses only ``run_setup.setup`` and ``step.train_step``, so the same script measures an
older checkout (``PYTHONPATH=<checkout> python benchmarks/train_throughput.py``): before/after.

    python benchmarks/train_throughput.py [--config configs/demo.yaml] [--steps 16] [--rounds 4]
"""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from ernie_cpt.config import load_config
from ernie_cpt.training import step as step_module
from ernie_cpt.training.run_setup import Run, RunOptions, setup

SYNC_METHODS = ("item", "__float__", "__int__", "__bool__", "tolist", "nonzero")


def parse_args() -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="configs/demo.yaml")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--steps", type=int, default=16, help="timed steps per side per round")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--hf-workers", type=int, default=0, help="DataLoader workers of the HF loops")
    p.add_argument("--skip-hf", action="store_true")
    p.add_argument("--skip-mixture", action="store_true")
    return p.parse_args()


# ------------------------------------------------------------------ instrumentation


class Recorder:
    """Padding cells per task (from every collate) and host-sync calls outside collation."""

    def __init__(self) -> None:
        self.cells: dict[str, list[int]] = {}  # task -> [real tokens, cells]
        self.syncs = 0
        self.where: Counter[str] = Counter()  # "method in file:function" -> calls
        self.counting = False
        self.host = threading.local()  # .depth > 0 inside collate/attach

    def wrap_tasks(self, run: Run) -> None:
        """Record padding of each collated batch; mark collation as host work."""
        for name, task in run.data.tasks.items():
            task.collate = self._collate(name, task.collate)
            if hasattr(task, "attach"):
                task.attach = self._host(task.attach)

    def _host(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            self.host.depth = getattr(self.host, "depth", 0) + 1
            try:
                return fn(*args, **kwargs)
            finally:
                self.host.depth -= 1

        return wrapped

    def _collate(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            batch = fn(*args, **kwargs)
            mask = batch["attention_mask"]
            real, cells = self.cells.setdefault(name, [0, 0])
            self.cells[name] = [real + int(mask.sum()), cells + mask.numel()]
            return batch

        return self._host(wrapped)

    @contextmanager
    def patched(self) -> Iterator[None]:
        """Count sync calls made by the main thread outside collation while counting."""
        main = threading.main_thread()
        saved = {m: getattr(torch.Tensor, m) for m in (*SYNC_METHODS, "__getitem__")}

        def counted(method: str) -> Callable[..., Any]:
            original = saved[method]

            def call(tensor: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
                if (
                    self._counts(main)
                    and (method != "__getitem__" or _bool_index(args))
                    and not _host_optimizer_step()
                ):
                    self.syncs += 1
                    self.where[f"{method} in {_caller()}"] += 1
                return original(tensor, *args, **kwargs)

            return call

        for method in saved:
            setattr(torch.Tensor, method, counted(method))
        try:
            yield
        finally:
            for method, original in saved.items():
                setattr(torch.Tensor, method, original)

    def _counts(self, main: threading.Thread) -> bool:
        return (
            self.counting
            and threading.current_thread() is main
            and not getattr(self.host, "depth", 0)
        )


def _host_optimizer_step() -> bool:
    """torch's AdamW (DeepSpeed's CPU choice) reads its step counter, a host tensor by
    design (FusedAdam, used on a GPU, does not): not a device synchronisation."""
    frame = sys._getframe(3)
    return frame.f_code.co_filename.endswith(("torch/optim/optimizer.py", "torch/optim/adam.py"))


def _caller() -> str:
    """file:line of the first frame outside torch's own Tensor code."""
    frame = sys._getframe(3)
    while frame.f_back and "torch/_tensor" in frame.f_code.co_filename:
        frame = frame.f_back
    return f"{Path(frame.f_code.co_filename).name}:{frame.f_code.co_name}"


def _bool_index(args: tuple[Any, ...]) -> bool:
    index = args[0] if args else None
    items = index if isinstance(index, tuple) else (index,)
    return any(torch.is_tensor(i) and i.dtype == torch.bool for i in items)


# ------------------------------------------------------------------ the ernie-cpt side


def stepper(run: Run, task_of: Callable[[int], str]) -> Callable[[], int]:
    """One ``train_step`` per call (task ``task_of(call)``, the run's last stage); returns its
    real tokens. Uses the input pipeline where the checkout has one."""
    stage = run.schedule.stages[-1]
    params = inspect.signature(step_module.train_step).parameters
    pipeline = None
    if "pipeline" in params:
        from ernie_cpt.training.input_pipeline import InputPipeline

        pipeline = InputPipeline(
            run.streams,
            lambda t, s, c: step_module.build_micro_batch(run, t, s, c),
            run.config.train.prefetch,
        )
    counter = iter(range(10**9))

    def step() -> int:
        index = next(counter)
        kwargs = {"pipeline": pipeline} if pipeline is not None else {}
        result = step_module.train_step(run, task_of(index), stage, index, **kwargs)
        return result.tokens

    return step


def timed(step: Callable[[], int], steps: int) -> tuple[int, float, float]:
    """(tokens, wall seconds, process CPU seconds) of ``steps`` calls."""
    wall, cpu, tokens = time.perf_counter(), time.process_time(), 0
    for _ in range(steps):
        tokens += step()
    return tokens, time.perf_counter() - wall, time.process_time() - cpu


def alternate(
    sides: dict[str, Callable[[], int]], args: argparse.Namespace
) -> dict[str, list[tuple[int, float, float]]]:
    """Warm each side up, then ``rounds`` rounds of ``steps`` steps each, rotating order."""
    for step in sides.values():
        timed(step, args.warmup)
    names = list(sides)
    rounds: dict[str, list[tuple[int, float, float]]] = {n: [] for n in names}
    for index in range(args.rounds):
        shift = index % len(names)
        for name in names[shift:] + names[:shift]:
            rounds[name].append(timed(sides[name], args.steps))
    return rounds


def rate(rounds: list[tuple[int, float, float]]) -> list[float]:
    """Real tokens per process-CPU second, per round."""
    return [n / c for n, _, c in rounds]


def spread(values: list[float], fmt: str = ".2f") -> str:
    """Median [min-max]."""
    return f"{statistics.median(values):{fmt}} [{min(values):{fmt}}-{max(values):{fmt}}]"


def ratio(a: list[float], b: list[float]) -> str:
    """Median [range] of the per-round ratios a/b."""
    return spread([x / y for x, y in zip(a, b, strict=True)])


# ------------------------------------------------------------------ sections


def mixture_section(args: argparse.Namespace, tmp: Path) -> Recorder:
    """Eight-task mixture vs MLM-only, padding per task, syncs per micro-batch."""
    config = load_config(args.config, ["logging.progress_bar=false", *args.set])
    run = setup(config, tmp / "mixture", RunOptions(resume="never", progress=False))
    recorder = Recorder()
    recorder.wrap_tasks(run)
    tasks = list(run.schedule.stages[-1].tasks)
    sides = {
        "mixture": stepper(run, lambda i: tasks[i % len(tasks)]),
        "mlm-only": stepper(run, lambda i: "mlm"),
    }
    rounds = alternate(sides, args)
    per_token = {n: [c / t for t, _, c in r] for n, r in rounds.items()}
    print(f"\n== mixture vs MLM-only ({len(tasks)} tasks: {', '.join(tasks)})")
    for name, values in per_token.items():
        print(f"{name:<10} CPU us per real token {spread([1e6 * v for v in values], '.1f')}")
    ratios = ratio(per_token["mixture"], per_token["mlm-only"])
    print(f"mixture / MLM-only cost per real token = {ratios} (target <= 1.10)")
    print("\n== padded share of batch cells per task (target <= 0.10)")
    for name, (real, cells) in sorted(recorder.cells.items()):
        print(f"{name:<24} {1 - real / cells:.3f}  ({cells} cells)")
    sync_section(run, recorder, tasks)
    return recorder


def sync_section(run: Run, recorder: Recorder, tasks: list[str]) -> None:
    """Host-device syncs per micro-batch of an MLM step and of each sentence-task step."""
    print("\n== host syncs per micro-batch (training thread, outside collation)")
    probes = ["mlm"] + [t for t in tasks if run.data.tasks[t].level == "sentence"]
    step = stepper(run, lambda i: probes[i % len(probes)])
    accumulation = run.config.train.gradient_accumulation_steps
    build = step_module.build_micro_batch  # host work, even when run in the training thread
    step_module.build_micro_batch = recorder._host(build)
    try:
        with recorder.patched():
            for task in probes:
                recorder.syncs, recorder.counting = 0, True
                step()
                recorder.counting = False
                print(f"{task:<24} {recorder.syncs / accumulation:.0f}")
    finally:
        step_module.build_micro_batch = build
    print("where (all probes):", dict(recorder.where.most_common(8)))


def hf_section(args: argparse.Namespace, tmp: Path) -> None:
    """ernie-cpt's MLM step vs the fair and the plain Hugging Face loops."""
    import mlm_throughput as hf

    config = load_config(args.config, ["tasks={mlm: {}}", "logging.progress_bar=false", *args.set])
    run = setup(config, tmp / "mlm", RunOptions(resume="never", progress=False))
    sides = {
        "ernie-cpt": stepper(run, lambda i: "mlm"),
        "hf-fair": hf.hf_stepper(run, masked_only=True, workers=args.hf_workers),
        "hf-full": hf.hf_stepper(run, masked_only=False, workers=args.hf_workers),
    }
    if importlib.util.find_spec("ernie_cpt.model.sparse_top") is not None:  # newer checkouts
        sides["hf-sparse-top"] = hf.hf_stepper(
            run, masked_only=True, workers=args.hf_workers, sparse_top=True
        )
    rounds = alternate(sides, args)
    rates = {n: rate(r) for n, r in rounds.items()}
    same = len({tuple(t for t, _, _ in r) for r in rounds.values()}) == 1
    print(f"\n== MLM step, real tokens per CPU second (same tokens every round: {same})")
    for name, values in rates.items():
        print(f"{name:<14} {spread(values, '.0f')}")
    print(f"ernie-cpt / hf-fair = {ratio(rates['ernie-cpt'], rates['hf-fair'])} (target >= 1.10)")
    print(f"ernie-cpt / hf-full = {ratio(rates['ernie-cpt'], rates['hf-full'])}")
    if "hf-sparse-top" in rates:
        print(f"ernie-cpt / hf-sparse-top = {ratio(rates['ernie-cpt'], rates['hf-sparse-top'])}")


def main() -> None:
    """Run the sections; print their tables and ratios."""
    import datasets
    import torch.distributed as dist
    import transformers

    args = parse_args()
    torch.set_num_threads(args.threads)
    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_error()
    with tempfile.TemporaryDirectory(prefix="train-bench-") as tmp:
        if not args.skip_mixture:
            mixture_section(args, Path(tmp))
        if not args.skip_hf:
            hf_section(args, Path(tmp))
        if dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    main()
