"""init_from: BERT/ERNIE checkpoints built locally with transformers, heads and config included."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import pytest
import torch
import yaml
from transformers import (
    BertConfig,
    BertForMaskedLM,
    BertTokenizerFast,
    ErnieConfig,
    ErnieForPreTraining,
)

from ernie_cpt.config import ConfigError, ModelConfig, load_config
from ernie_cpt.model import build_model
from ernie_cpt.model.init_from import load_init_checkpoint
from pretrain_tasks import build_task
from pretrain_tasks.base import IGNORE_INDEX
from pretrain_tasks.masking import masked_lm_loss

TINY = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=64,
    max_position_embeddings=64,
)
TASKS = ("mlm", "knowledge_masking", "sentence_distance")


def save_wordpiece_tokenizer(tokenizer, out: Path) -> None:
    """A BERT tokenizer from a plain vocab.txt (ids in the fixture tokenizer's order)."""
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])
    (out / "vocab.txt").write_text("".join(f"{token}\n" for token, _ in vocab), encoding="utf-8")
    BertTokenizerFast(vocab_file=str(out / "vocab.txt"), do_lower_case=True).save_pretrained(
        str(out)
    )


def randomise(module: torch.nn.Module, seed: int) -> None:
    """Every parameter drawn anew (zero biases and unit LayerNorms would hide a wrong mapping)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * 0.05)


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory, tokenizer) -> Path:
    out = tmp_path_factory.mktemp("bert")
    torch.manual_seed(0)
    bert = BertForMaskedLM(BertConfig(vocab_size=len(tokenizer), **TINY))
    randomise(bert, 1)
    bert.save_pretrained(str(out))
    save_wordpiece_tokenizer(tokenizer, out)
    return out


@pytest.fixture(scope="module")
def ernie_dir(tmp_path_factory, tokenizer) -> Path:
    out = tmp_path_factory.mktemp("ernie")
    torch.manual_seed(0)
    config = ErnieConfig(
        vocab_size=len(tokenizer), use_task_id=True, task_type_vocab_size=3, **TINY
    )
    ernie = ErnieForPreTraining(config)
    randomise(ernie, 2)
    ernie.save_pretrained(str(out))
    raw = json.loads((out / "config.json").read_text())
    raw["auto_map"] = {"AutoModel": "evil.EvilModel"}  # a remote-code pointer: never followed
    (out / "config.json").write_text(json.dumps(raw))
    save_wordpiece_tokenizer(tokenizer, out)
    return out


def tasks_for(tokenizer):
    return {name: build_task(name, {}, tokenizer, 64) for name in TASKS}


def build_from(path: Path, tokenizer, **model):
    config = ModelConfig(init_from=str(path), **{**TINY, **model})
    return build_model(config, tasks_for(tokenizer), len(tokenizer), tokenizer.pad_token_id)


def test_bert_masked_lm_head_arrives_exactly_in_both_masked_lm_heads(bert_dir, tokenizer):
    bert = BertForMaskedLM.from_pretrained(str(bert_dir))
    model = build_from(bert_dir, tokenizer)
    theirs = bert.cls.predictions
    for name in ("mlm", "knowledge_masking"):
        head = model.heads[name]
        assert torch.equal(head.dense.weight, theirs.transform.dense.weight), name
        assert torch.equal(head.dense.bias, theirs.transform.dense.bias), name
        assert torch.equal(head.layer_norm.weight, theirs.transform.LayerNorm.weight), name
        assert torch.equal(head.layer_norm.bias, theirs.transform.LayerNorm.bias), name
        assert torch.equal(head.decoder.bias, theirs.bias), name
        assert head.decoder.weight is model.encoder.embeddings.word_embeddings.weight
    assert torch.equal(
        model.encoder.embeddings.word_embeddings.weight, bert.bert.embeddings.word_embeddings.weight
    )


def test_first_forward_equals_the_checkpoint(bert_dir, tokenizer):
    """Task-embedding rows a BERT lacks start at zero: our MLM logits equal BertForMaskedLM's."""
    bert = BertForMaskedLM.from_pretrained(str(bert_dir)).eval()
    model = build_from(bert_dir, tokenizer, hidden_dropout_prob=0.0).eval()
    batch = tokenizer(
        ["the river runs north", "a city in the valley"], padding=True, return_tensors="pt"
    )
    task_ids = torch.full_like(batch["input_ids"], 2)
    with torch.no_grad():
        encoded = model(
            batch["input_ids"], batch["attention_mask"], batch["token_type_ids"], task_ids
        )
        ours = model.heads["mlm"](encoded.sequence_output)  # (B, T, V)
        expected = bert(**batch).logits
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-5)


def test_one_log_line_names_fresh_and_ignored_tensors(ernie_dir, tokenizer, caplog):
    with caplog.at_level(logging.INFO, logger="ernie_cpt.model.init_from"):
        model = build_from(ernie_dir, tokenizer)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("init_from")]
    assert len(lines) == 1
    line = lines[0]
    assert "heads.sentence_distance.classifier.weight" in line or "heads.sentence_distance" in line
    assert "cls.seq_relationship.weight (next-sentence head" in line
    assert "ignored 2:" in line  # the NSP weight and bias, nothing else
    # ERNIE's 3 task rows arrive; ours beyond them are zero
    theirs = ErnieForPreTraining.from_pretrained(str(ernie_dir)).ernie.embeddings
    rows = model.encoder.embeddings.task_type_embeddings.weight
    assert torch.equal(rows[:3], theirs.task_type_embeddings.weight)
    assert torch.equal(rows[3:], torch.zeros_like(rows[3:]))
    assert not hasattr(model.encoder.config, "auto_map")
    assert "auto_map" not in model.encoder.config.to_dict()


def test_report_lists_loaded_fresh_and_ignored(bert_dir, tokenizer):
    model = build_from(bert_dir, tokenizer)
    report = load_init_checkpoint(model, bert_dir)
    # BertForMaskedLM has no pooler: created fresh; the classifier heads are fresh too
    assert "encoder.pooler.dense.weight" in report.fresh
    assert any(k.startswith("heads.sentence_distance.") for k in report.fresh)
    assert not any(k.startswith(("heads.mlm.", "heads.knowledge_masking.")) for k in report.fresh)
    assert "heads.mlm.dense.weight" in report.loaded
    assert report.ignored == {}


def test_pickled_bin_weights_load_weights_only_and_a_payload_never_runs(
    bert_dir, tokenizer, tmp_path
):
    plain = tmp_path / "bin"
    plain.mkdir()
    for name in ("config.json", "vocab.txt"):
        (plain / name).write_bytes((bert_dir / name).read_bytes())
    bert = BertForMaskedLM.from_pretrained(str(bert_dir))
    torch.save(bert.state_dict(), plain / "pytorch_model.bin")
    model = build_from(plain, tokenizer)
    assert torch.equal(model.heads["mlm"].dense.weight, bert.cls.predictions.transform.dense.weight)

    marker = tmp_path / "payload-ran"
    torch.save({"w": Payload(marker)}, plain / "pytorch_model.bin")
    with pytest.raises(ConfigError, match="weights_only"):
        build_from(plain, tokenizer)
    assert not marker.exists()


class Payload:
    """A pickle whose loading would create a file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def write_config(tmp_path: Path, tree: dict) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(tree))
    return path


def test_config_is_filled_from_the_checkpoint(bert_dir, tmp_path):
    config = load_config(write_config(tmp_path, {"model": {"init_from": str(bert_dir)}}))
    assert (config.model.hidden_size, config.model.num_hidden_layers) == (32, 2)
    assert (config.model.num_attention_heads, config.model.intermediate_size) == (2, 64)
    assert config.model.max_position_embeddings == 64
    assert config.tokenizer.path == str(bert_dir)
    raw = json.loads((bert_dir / "config.json").read_text())
    assert config.tokenizer.vocab_size == raw["vocab_size"]


def test_contradicting_shape_keys_are_refused_all_at_once(bert_dir, tmp_path):
    tree = {"model": {"init_from": str(bert_dir), "hidden_size": 768, "num_hidden_layers": 2}}
    tree["tokenizer"] = {"vocab_size": 8000}
    with pytest.raises(ConfigError) as error:
        load_config(write_config(tmp_path, tree))
    message = str(error.value)
    assert "model.hidden_size=768 (the checkpoint has 32)" in message
    assert "tokenizer.vocab_size=8000" in message
    assert "num_hidden_layers" not in message  # set, but equal to the checkpoint's


def test_checkpoint_without_tokenizer_needs_tokenizer_path(tmp_path, tokenizer):
    out = tmp_path / "bare"
    BertForMaskedLM(BertConfig(vocab_size=len(tokenizer), **TINY)).save_pretrained(str(out))
    with pytest.raises(ConfigError, match="holds no tokenizer"):
        load_config(write_config(tmp_path, {"model": {"init_from": str(out)}}))


def train_briefly(bert: BertForMaskedLM, batch, labels, steps: int) -> None:
    optimiser = torch.optim.AdamW(bert.parameters(), lr=3e-3)
    bert.train()
    for _ in range(steps):
        loss = bert(**batch, labels=labels).loss
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()


def test_first_step_mlm_loss_from_a_trained_checkpoint_is_far_below_ln_vocab(tokenizer, tmp_path):
    from helpers import FIXTURE_TEXT

    sentences = [s for _, _, doc in FIXTURE_TEXT for s in doc][:16]
    batch = tokenizer(sentences, padding=True, truncation=True, max_length=32, return_tensors="pt")
    generator = torch.Generator().manual_seed(3)
    chosen = (torch.rand(batch["input_ids"].shape, generator=generator) < 0.15) & (
        batch["attention_mask"].bool()
    )
    chosen &= batch["input_ids"] > tokenizer.mask_token_id  # not a special token
    labels = torch.where(
        chosen, batch["input_ids"], torch.full_like(chosen, IGNORE_INDEX, dtype=torch.long)
    )
    masked = dict(batch, input_ids=batch["input_ids"].masked_fill(chosen, tokenizer.mask_token_id))
    torch.manual_seed(0)
    bert = BertForMaskedLM(BertConfig(vocab_size=len(tokenizer), hidden_dropout_prob=0.0, **TINY))
    train_briefly(bert, masked, labels, steps=150)
    bert.eval()
    with torch.no_grad():
        theirs = bert(**masked, labels=labels).loss.item()
    bert.save_pretrained(str(tmp_path / "trained"))

    model = build_from(tmp_path / "trained", tokenizer, hidden_dropout_prob=0.0).eval()
    task_ids = torch.zeros_like(masked["input_ids"])
    with torch.no_grad():
        encoded = model(
            masked["input_ids"], masked["attention_mask"], masked["token_type_ids"], task_ids
        )
        ours = masked_lm_loss(model.heads["mlm"], encoded, labels)
    loss = ours.mean().item()
    assert loss == pytest.approx(theirs, abs=1e-4)
    assert loss < 0.25 * math.log(len(tokenizer)), (loss, math.log(len(tokenizer)))


def test_shipped_continue_bert_config_needs_only_the_checkpoint_path(bert_dir):
    from helpers import REPO

    config = load_config(REPO / "configs" / "continue-bert.yaml", [f"model.init_from={bert_dir}"])
    assert config.model.init_from == str(bert_dir)
    assert (config.model.hidden_size, config.model.num_hidden_layers) == (32, 2)
    assert config.tokenizer.path == str(bert_dir)
    assert list(config.tasks)[:2] == ["mlm", "knowledge_masking"]
