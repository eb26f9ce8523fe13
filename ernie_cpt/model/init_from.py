"""Start a multi-task model from a local BERT or ERNIE checkpoint, heads included.

Key mapping (checkpoint -> ours), for BertModel/ErnieModel, *ForMaskedLM and *ForPreTraining:

- ``bert.*`` / ``ernie.*`` / bare encoder keys -> ``encoder.*``; old TF names
  ``LayerNorm.gamma/beta`` are read as ``weight/bias``; the checkpoint's task embedding
  (ERNIE) fills the first rows of ours.
- ``cls.predictions.transform.dense.*`` -> ``heads.<h>.dense.*``,
  ``cls.predictions.transform.LayerNorm.*`` -> ``heads.<h>.layer_norm.*`` and the output bias
  ``cls.predictions.bias`` (or ``cls.predictions.decoder.bias``) -> ``heads.<h>.decoder.bias``
  for every masked-LM head ``<h>`` (``mlm`` and ``knowledge_masking``). The decoder weight is
  tied to the word embeddings on both sides.
- ``cls.seq_relationship.*`` (BERT's next-sentence head) is ignored: its two classes
  (next / random) are not ``sentence_distance``'s three, so no head of ours corresponds.

Only safetensors, or ``torch.load(weights_only=True)`` for ``*.bin``, are read; the model
class is never taken from the checkpoint (no remote code).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn
from transformers import ErnieConfig

from ernie_cpt.config import ModelConfig
from ernie_cpt.init_source import InitFromError, read_checkpoint_config

log = logging.getLogger(__name__)

ENCODER_PREFIXES = ("bert.", "ernie.", "encoder_model.")
# checkpoint suffix after "cls.predictions." -> our masked-LM head's parameter
MLM_HEAD_KEYS = {
    "transform.dense.weight": "dense.weight",
    "transform.dense.bias": "dense.bias",
    "transform.LayerNorm.weight": "layer_norm.weight",
    "transform.LayerNorm.bias": "layer_norm.bias",
    "bias": "decoder.bias",
    "decoder.bias": "decoder.bias",
}
NSP_PREFIX = "cls.seq_relationship."
TASK_ROWS = "encoder.embeddings.task_type_embeddings.weight"
# config.json keys that are bookkeeping or code pointers, never copied to our config.
DROPPED_CONFIG_KEYS = ("auto_map", "architectures", "model_type", "transformers_version")


def config_from_checkpoint(path: Path, model: ModelConfig) -> ErnieConfig:
    """The checkpoint's config.json as an ErnieConfig with the task embedding on.

    Only fields ErnieConfig knows are kept (``auto_map`` and other code pointers are dropped);
    the dropouts come from ``model`` (filled from the checkpoint unless the user set them).
    """
    raw = read_checkpoint_config(path)
    known = set(ErnieConfig().to_dict()) - set(DROPPED_CONFIG_KEYS)
    keep = {k: v for k, v in raw.items() if k in known}
    keep.update(
        use_task_id=True,
        task_type_vocab_size=max(model.task_type_vocab_size, raw.get("task_type_vocab_size", 0)),
        hidden_dropout_prob=model.hidden_dropout_prob,
        attention_probs_dropout_prob=model.attention_probs_dropout_prob,
    )
    config = ErnieConfig(**keep)
    config._attn_implementation = model.attn_implementation
    return config


def read_state(path: Path) -> dict[str, Tensor]:
    """All tensors of a checkpoint directory: ``*.safetensors``, else ``*.bin`` weights-only."""
    from safetensors.torch import load_file

    state: dict[str, Tensor] = {}
    files = sorted(path.glob("*.safetensors"))
    for file in files:
        state.update(load_file(str(file)))
    if not files:
        files = sorted(path.glob("*.bin"))
        for file in files:
            try:
                loaded = torch.load(file, map_location="cpu", weights_only=True)
            except Exception as error:  # an unpickler refusal: name the file, never retry unsafely
                raise InitFromError(
                    f"{file}: not loadable with weights_only=True ({type(error).__name__}); "
                    "convert it to safetensors"
                ) from None
            state.update({k: v for k, v in loaded.items() if isinstance(v, Tensor)})
    if not files:
        raise InitFromError(f"model.init_from {path}: no *.safetensors or *.bin weights")
    return {_modern_name(k): v for k, v in state.items()}


def _modern_name(key: str) -> str:
    """TF-era LayerNorm names (``gamma``/``beta``) as torch's (``weight``/``bias``)."""
    if key.endswith("LayerNorm.gamma"):
        return key[: -len("gamma")] + "weight"
    if key.endswith("LayerNorm.beta"):
        return key[: -len("beta")] + "bias"
    return key


@dataclass
class InitReport:
    """What ``init_from`` did with every tensor: loaded, created fresh, ignored (with why)."""

    loaded: list[str] = field(default_factory=list)
    fresh: list[str] = field(default_factory=list)
    ignored: dict[str, str] = field(default_factory=dict)

    def line(self, path: Path) -> str:
        """The one log line: counts per part for loaded, full names for the rest."""
        parts: dict[str, int] = {}
        for key in self.loaded:
            part = ".".join(key.split(".")[:2]) if key.startswith("heads.") else "encoder"
            parts[part] = parts.get(part, 0) + 1
        loaded = ", ".join(f"{p} {n}" for p, n in parts.items())
        ignored = ", ".join(f"{k} ({why})" for k, why in self.ignored.items())
        return (
            f"init_from {path}: loaded {len(self.loaded)} tensors ({loaded}); "
            f"created fresh {len(self.fresh)}: {', '.join(self.fresh) or '-'}; "
            f"ignored {len(self.ignored)}: {ignored or '-'}"
        )


def _masked_lm_heads(model: nn.Module) -> list[str]:
    from pretrain_tasks.masking import MaskedLMHead

    return [name for name, head in model.heads.items() if isinstance(head, MaskedLMHead)]


def _tied_keys(model: nn.Module) -> set[str]:
    return {
        f"heads.{n}.decoder.weight"
        for n, h in model.heads.items()
        if getattr(h, "tie_to_word_embeddings", False)
    }


def map_checkpoint(
    state: dict[str, Tensor], model: nn.Module
) -> tuple[dict[str, Tensor], dict[str, str]]:
    """(our key -> tensor, ignored checkpoint key -> reason) for ``model``'s state dict."""
    mlm_heads = _masked_lm_heads(model)
    mapped: dict[str, Tensor] = {}
    ignored: dict[str, str] = {}
    words = None
    for key, value in state.items():
        if key.startswith("cls.predictions."):
            suffix = key[len("cls.predictions.") :]
            if suffix == "decoder.weight":
                words = value  # tied: checked against the word embeddings below
            elif suffix in MLM_HEAD_KEYS and mlm_heads:
                for head in mlm_heads:
                    mapped[f"heads.{head}.{MLM_HEAD_KEYS[suffix]}"] = value
            else:
                ignored[key] = "no masked-LM task" if suffix in MLM_HEAD_KEYS else "unknown"
            continue
        if key.startswith(NSP_PREFIX):
            ignored[key] = "next-sentence head: no task of ours has its 2 classes"
            continue
        for prefix in ENCODER_PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix) :]
                break
        mapped[f"encoder.{key}"] = value
    own = model.state_dict()
    embeddings = state_word_embeddings(mapped)
    if words is not None and (embeddings is None or not torch.equal(words, embeddings)):
        ignored["cls.predictions.decoder.weight"] = "untied decoder; ours is tied to embeddings"
    return _fit(mapped, own, ignored), ignored


def state_word_embeddings(mapped: dict[str, Tensor]) -> Tensor | None:
    """The checkpoint's word embeddings, once mapped to our names."""
    return mapped.get("encoder.embeddings.word_embeddings.weight")


def _fit(
    mapped: dict[str, Tensor], own: dict[str, Tensor], ignored: dict[str, str]
) -> dict[str, Tensor]:
    """Keep tensors whose name and shape exist in ours; task-embedding rows are copied in."""
    usable: dict[str, Tensor] = {}
    for key, value in mapped.items():
        if key not in own:
            ignored[key] = "no such parameter in our model"
        elif key == TASK_ROWS and value.shape[1:] == own[key].shape[1:]:
            rows = min(value.shape[0], own[key].shape[0])  # (rows, H): zeros beyond them
            merged = torch.zeros_like(own[key])
            merged[:rows] = value[:rows]
            usable[key] = merged
        elif own[key].shape != value.shape:
            ignored[key] = f"shape {tuple(value.shape)} != ours {tuple(own[key].shape)}"
        else:
            usable[key] = value
    return usable


def _zero_new_task_rows(model: nn.Module, usable: dict[str, Tensor]) -> None:
    """Task-embedding rows the checkpoint lacks start at zero, so that the first forward equals
    the checkpoint's own (a BERT has no task embedding; a random row would perturb every input).
    """
    if TASK_ROWS not in usable:
        usable[TASK_ROWS] = torch.zeros_like(model.state_dict()[TASK_ROWS])  # (rows, H)


def load_init_checkpoint(model: nn.Module, path: Path) -> InitReport:
    """Load a BERT/ERNIE checkpoint into a MultiTaskModel; logs and returns the report."""
    path = Path(path)
    usable, ignored = map_checkpoint(read_state(path), model)
    tied = _tied_keys(model)
    loaded = sorted(usable)
    zeroed = [] if TASK_ROWS in usable else [f"{TASK_ROWS} (zeros)"]
    _zero_new_task_rows(model, usable)
    with torch.no_grad():
        result = model.load_state_dict(usable, strict=False)
    fresh = sorted(k for k in result.missing_keys if k not in tied) + zeroed
    report = InitReport(loaded=loaded, fresh=fresh, ignored=ignored)
    model.tie_weights()
    log.info(report.line(path))
    act = model.encoder.config.hidden_act
    if act != "gelu" and _masked_lm_heads(model):  # our MaskedLMHead's transform uses GELU
        log.warning(
            "init_from %s: the checkpoint's hidden_act is %r; the masked-LM heads' transform "
            "uses GELU, so they start from its weights but not its exact function",
            path,
            act,
        )
    return report
