"""Export a run to a Hugging Face directory: encoder + tokenizer (loadable with ``AutoModel`` /
``AutoTokenizer`` offline, safetensors), heads in ``heads.safetensors``, the task-id map in
``task_ids.json``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from ernie_cpt.training import checkpoint as ckpt


def load_run_model(
    run_dir: Path, checkpoint: Path | None = None
) -> tuple[Any, Any, dict[str, Any]]:
    """(MultiTaskModel with the checkpoint's weights, tokenizer, trainer state) of a run."""
    from safetensors.torch import load_file
    from transformers import ErnieConfig, ErnieModel

    from ernie_cpt.config import config_from_dict
    from ernie_cpt.data.tokenization import load_tokenizer
    from ernie_cpt.model import MultiTaskModel
    from pretrain_tasks import build_task

    run_dir = Path(run_dir)
    checkpoint = checkpoint or ckpt.newest_valid(run_dir / "checkpoints")
    if checkpoint is None:
        raise FileNotFoundError(f"{run_dir}: no valid checkpoint to export")
    problem = ckpt.verify(checkpoint)
    if problem:
        raise ValueError(f"{checkpoint}: {problem}")
    saved = ckpt.read_state(checkpoint)
    config = config_from_dict(saved["config"])
    tokenizer = load_tokenizer(run_dir / "tokenizer")
    encoder = ErnieModel(ErnieConfig.from_json_file(str(run_dir / "encoder_config.json")))
    tasks = {
        n: build_task(n, o, tokenizer, config.data.max_seq_length) for n, o in config.tasks.items()
    }
    model = MultiTaskModel(encoder, {n: t.build_head(encoder.config) for n, t in tasks.items()})
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


def export_run(run_dir: Path, out_dir: Path, checkpoint: Path | None = None) -> Path:
    """Write the export directory (replacing an existing one atomically)."""
    from safetensors.torch import save_file

    model, tokenizer, saved = load_run_model(Path(run_dir), checkpoint)
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(f".tmp-{out_dir.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.encoder.save_pretrained(str(tmp), safe_serialization=True)
    tokenizer.save_pretrained(str(tmp))
    heads = {
        f"{name}.{key}": tensor.contiguous()
        for name, head in model.heads.items()
        for key, tensor in head.state_dict().items()
        if not (getattr(head, "tie_to_word_embeddings", False) and key == "decoder.weight")
    }
    save_file(heads, str(tmp / "heads.safetensors"))
    info = {
        "task_ids": saved["train_state"]["task_ids"],
        "tied_to_word_embeddings": [
            n for n, h in model.heads.items() if getattr(h, "tie_to_word_embeddings", False)
        ],
        "step": saved["train_state"]["step"],
        "schedule": saved["schedule"]["name"],
    }
    (tmp / "task_ids.json").write_text(json.dumps(info, indent=2))
    if out_dir.exists():
        shutil.rmtree(out_dir)
    tmp.rename(out_dir)
    return out_dir
