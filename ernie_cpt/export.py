"""Export a run to a Hugging Face directory the ecosystem can use, offline, safetensors only.

``model.safetensors`` + ``config.json`` form an ``ErnieForMaskedLM`` checkpoint: the encoder
(pooler included) under ``ernie.*`` and the trained masked-LM head (task ``mlm``, else
``knowledge_masking``) under ``cls.predictions.*``. ``AutoModel`` loads the encoder,
``AutoModelForMaskedLM`` and ``pipeline("fill-mask")`` the encoder with the trained head (no
newly initialised weight), ``AutoTokenizer`` the run's tokenizer. Beside them:
``heads.safetensors`` holds every task's head (keys ``<task>.<parameter>``; tied decoder
weights are the word embeddings and are not repeated), ``task_ids.json`` the task-id map, and
``README.md`` a model card (tasks, schedule, steps, tokens, data, held-out metrics).

Export never deletes what it did not write: it builds a fresh hidden directory beside ``OUT``
and renames it into place. An existing non-empty ``OUT`` is refused unless ``overwrite``, and
even then only a previous export (it holds ``task_ids.json``) is replaced.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any

from ernie_cpt.config import ConfigError
from ernie_cpt.errors import InputError, MissingInputError
from ernie_cpt.training import checkpoint as ckpt

# The file whose presence marks a directory as an export (replaceable with overwrite).
EXPORT_MARKER = "task_ids.json"
# Masked-LM heads exported as the AutoModelForMaskedLM head, in order of preference.
MASKED_LM_TASKS = ("mlm", "knowledge_masking")


class ExportError(ConfigError):
    """An export that would overwrite or delete something the user did not ask to replace."""


def load_run_model(
    run_dir: Path, checkpoint: Path | None = None
) -> tuple[Any, Any, dict[str, Any]]:
    """(MultiTaskModel with the checkpoint's weights, tokenizer, trainer state) of a run."""
    from safetensors.torch import load_file
    from transformers import ErnieConfig, ErnieModel

    from ernie_cpt.config import config_from_dict
    from ernie_cpt.data.tokenization import load_tokenizer
    from ernie_cpt.model import MultiTaskModel
    from ernie_cpt.model.sharing.export import rebuild_sharing
    from pretrain_tasks import build_task

    run_dir = Path(run_dir)
    checkpoint = checkpoint or ckpt.newest_valid(run_dir / "checkpoints")
    if checkpoint is None:
        raise MissingInputError(f"{run_dir}: no valid checkpoint to export")
    problem = ckpt.verify(checkpoint)
    if problem:
        raise InputError(f"{checkpoint}: {problem}")
    saved = ckpt.read_state(checkpoint)
    config = config_from_dict(saved["config"])
    tokenizer = load_tokenizer(run_dir / "tokenizer")
    encoder = ErnieModel(ErnieConfig.from_json_file(str(run_dir / "encoder_config.json")))
    tasks = {
        n: build_task(n, o, tokenizer, config.data.max_seq_length) for n, o in config.tasks.items()
    }
    model = MultiTaskModel(encoder, {n: t.build_head(encoder.config) for n, t in tasks.items()})
    rebuild_sharing(model, config.sharing, {n: t.level for n, t in tasks.items()})
    stored = load_file(str(checkpoint / ckpt.WEIGHTS))
    # The file holds the whole trained module: the model ("model.*") and loss weighting.
    weights = {k.removeprefix("model."): v for k, v in stored.items() if k.startswith("model.")}
    result = model.load_state_dict(weights, strict=False)
    tied = {
        f"heads.{n}.decoder.weight"
        for n, h in model.heads.items()
        if getattr(h, "tie_to_word_embeddings", False)
    }
    missing = [k for k in result.missing_keys if k not in tied]
    if missing or result.unexpected_keys:
        raise ValueError(
            f"{checkpoint}: weights do not match the model (missing {missing}, unexpected {result.unexpected_keys})"
        )
    model.tie_weights()
    return model, tokenizer, saved


def masked_lm_head(model: Any) -> str | None:
    """The task whose head becomes ``cls.predictions`` (None: the run trained no masked LM)."""
    return next((name for name in MASKED_LM_TASKS if name in model.heads), None)


def export_state(model: Any, head: str | None) -> dict[str, Any]:
    """ErnieForMaskedLM's tensors: ``ernie.*`` (pooler kept for AutoModel) + ``cls.predictions.*``.

    The decoder weight and bias are tied in transformers (to the word embeddings and to
    ``cls.predictions.bias``), so they are not written twice.
    """
    state = {f"ernie.{k}": v for k, v in model.encoder.state_dict().items()}
    if head is not None:
        mlm = model.heads[head]
        state.update(
            {
                "cls.predictions.transform.dense.weight": mlm.dense.weight,
                "cls.predictions.transform.dense.bias": mlm.dense.bias,
                "cls.predictions.transform.LayerNorm.weight": mlm.layer_norm.weight,
                "cls.predictions.transform.LayerNorm.bias": mlm.layer_norm.bias,
                "cls.predictions.bias": mlm.decoder.bias,
            }
        )
    return {k: v.detach().contiguous() for k, v in state.items()}


def export_config(model: Any, head: str | None) -> Any:
    """The encoder's config as the export's: its architecture named, no remote-code pointer."""
    config = copy.deepcopy(model.encoder.config)
    config.architectures = ["ErnieForMaskedLM" if head else "ErnieModel"]
    for key in ("auto_map", "_name_or_path"):
        config.__dict__.pop(key, None)
    return config


def write_export(directory: Path, run_dir: Path, model: Any, tokenizer: Any, saved: dict) -> None:
    """Every file of the export into ``directory`` (which the caller created, empty)."""
    from safetensors.torch import save_file

    head = masked_lm_head(model)
    export_config(model, head).save_pretrained(str(directory))
    save_file(export_state(model, head), str(directory / "model.safetensors"), {"format": "pt"})
    tokenizer.save_pretrained(str(directory))
    heads = {
        f"{name}.{key}": tensor.contiguous()
        for name, module in model.heads.items()
        for key, tensor in module.state_dict().items()
        if not (getattr(module, "tie_to_word_embeddings", False) and key == "decoder.weight")
    }
    save_file(heads, str(directory / "heads.safetensors"))
    # A sharing architecture's task-specific top (sharing.json documents it), none for hard.
    from ernie_cpt.config import config_from_dict
    from ernie_cpt.model.sharing.export import save_sharing

    save_sharing(model, config_from_dict(saved["config"]).sharing, directory)
    info = {
        "task_ids": saved["train_state"]["task_ids"],
        "tied_to_word_embeddings": [
            n for n, h in model.heads.items() if getattr(h, "tie_to_word_embeddings", False)
        ],
        "masked_lm_head": head,
        "step": saved["train_state"]["step"],
        "schedule": saved["schedule"]["name"],
    }
    (directory / EXPORT_MARKER).write_text(json.dumps(info, indent=2))
    from ernie_cpt.model_card import model_card

    (directory / "README.md").write_text(model_card(run_dir, saved, info), encoding="utf-8")


def check_destination(out_dir: Path, run_dir: Path, overwrite: bool) -> None:
    """Refuse a destination whose replacement would lose data the user did not ask to replace."""
    if out_dir.is_symlink():
        raise ExportError(f"{out_dir}: is a symbolic link; give the export directory itself")
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise ExportError(f"{out_dir}: exists and is not a directory")
    if not any(out_dir.iterdir()):
        return
    if not overwrite:
        raise ExportError(
            f"{out_dir}: not empty; choose a new directory, or pass --overwrite to replace "
            "a previous export"
        )
    if not (out_dir / EXPORT_MARKER).is_file():
        raise ExportError(
            f"{out_dir}: not an export (no {EXPORT_MARKER}); --overwrite replaces only a "
            "previous export, never other files"
        )
    if run_dir.resolve().is_relative_to(out_dir.resolve()):
        raise ExportError(f"{out_dir}: holds the run being exported ({run_dir})")


def move_into_place(tmp: Path, out_dir: Path) -> None:
    """Rename the finished ``tmp`` to ``out_dir``; a replaced export is removed only afterwards."""
    old = None
    if out_dir.exists():
        if any(out_dir.iterdir()):  # a previous export, checked by check_destination
            old = out_dir.with_name(f".old-{out_dir.name}-{uuid.uuid4().hex[:8]}")
            os.rename(out_dir, old)
        else:
            out_dir.rmdir()
    os.rename(tmp, out_dir)
    if old is not None:
        shutil.rmtree(old)


def export_run(
    run_dir: Path, out_dir: Path, checkpoint: Path | None = None, *, overwrite: bool = False
) -> Path:
    """Write the export directory ``out_dir`` (see the module docstring); returns it."""
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    check_destination(out_dir, run_dir, overwrite)
    model, tokenizer, saved = load_run_model(run_dir, checkpoint)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    # A name of our own beside OUT (same filesystem: the final rename is atomic); an existing
    # ".tmp-OUT" someone else made is never touched.
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{out_dir.name}-", dir=out_dir.parent))
    try:
        write_export(tmp, run_dir, model, tokenizer, saved)
        check_destination(out_dir, run_dir, overwrite)  # again: it may have changed meanwhile
        move_into_place(tmp, out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return out_dir
