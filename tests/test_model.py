"""The model: ERNIE encoder with a task embedding, tied masked-LM head, init_from BERT."""

from __future__ import annotations

import torch
from transformers import BertConfig, BertForMaskedLM

from ernie_cpt.config import ModelConfig
from ernie_cpt.model import build_model, grow_task_embeddings
from pretrain_tasks import build_task

TINY = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=64,
    max_position_embeddings=64,
)


def tasks_for(tokenizer):
    return {name: build_task(name, {}, tokenizer, 64) for name in ("mlm", "sentence_distance")}


def test_heads_in_module_dict_and_mlm_decoder_tied(tokenizer):
    model = build_model(
        ModelConfig(**TINY), tasks_for(tokenizer), len(tokenizer), tokenizer.pad_token_id
    )
    assert set(model.heads) == {"mlm", "sentence_distance"}
    assert model.heads["mlm"].decoder.weight is model.encoder.embeddings.word_embeddings.weight
    assert model.encoder.config.use_task_id
    assert model.encoder.config._attn_implementation == "sdpa"


def test_init_from_a_local_bert_checkpoint_loads_its_weights(tokenizer, tmp_path):
    bert = BertForMaskedLM(BertConfig(vocab_size=len(tokenizer), **TINY))
    bert.save_pretrained(tmp_path)  # safetensors, keys prefixed "bert."
    model = build_model(
        ModelConfig(init_from=str(tmp_path), **TINY),
        tasks_for(tokenizer),
        len(tokenizer),
        tokenizer.pad_token_id,
    )
    ours = model.encoder.state_dict()
    theirs = bert.bert.state_dict()
    # every BERT tensor arrives (BertForMaskedLM has no pooler: ours stays fresh)
    assert set(theirs) <= set(ours) and set(ours) - set(theirs) >= {
        "embeddings.task_type_embeddings.weight"  # the task embedding is added
    }
    for key, value in theirs.items():
        assert torch.equal(ours[key], value), key


def test_init_from_a_local_ernie_checkpoint_loads_every_encoder_tensor(tokenizer, tmp_path):
    from transformers import ErnieConfig, ErnieModel

    torch.manual_seed(3)
    config = ErnieConfig(
        vocab_size=len(tokenizer), use_task_id=True, task_type_vocab_size=2, **TINY
    )
    ernie = ErnieModel(config)
    with torch.no_grad():  # distinct values, so a tensor left at its fresh init is caught
        for parameter in ernie.parameters():
            parameter.normal_(0.0, 0.5)
    ernie.save_pretrained(tmp_path)  # safetensors, unprefixed keys, pooler included
    model = build_model(
        ModelConfig(init_from=str(tmp_path), task_type_vocab_size=2, **TINY),
        tasks_for(tokenizer),
        len(tokenizer),
        tokenizer.pad_token_id,
    )
    ours, theirs = model.encoder.state_dict(), ernie.state_dict()
    assert set(ours) == set(theirs)
    for key, value in theirs.items():
        assert torch.equal(ours[key], value), key


def test_task_embedding_grows_keeping_trained_rows(tokenizer):
    model = build_model(
        ModelConfig(task_type_vocab_size=2, **TINY),
        tasks_for(tokenizer),
        len(tokenizer),
        tokenizer.pad_token_id,
    )
    before = model.encoder.embeddings.task_type_embeddings.weight.detach().clone()
    grow_task_embeddings(model, 5)
    after = model.encoder.embeddings.task_type_embeddings.weight
    assert after.shape == (5, 32) and torch.equal(after[:2], before)
    assert model.encoder.config.task_type_vocab_size == 5


def _encode(model, ids, mask, padded):
    torch.manual_seed(0)
    zeros = torch.zeros_like(ids)
    out = model(ids, mask, zeros, zeros, ["mlm", "sentence_distance"], padded=padded)
    return torch.cat(
        [out.for_task(t).sequence_output.flatten() for t in ("mlm", "sentence_distance")]
    )


def test_host_known_padding_gives_the_same_bits_and_never_reads_the_mask(tokenizer, monkeypatch):
    from ernie_cpt.config import SharingConfig

    ids = torch.randint(5, len(tokenizer), (3, 9), generator=torch.Generator().manual_seed(1))
    full = torch.ones_like(ids)
    padded = full.clone()
    padded[1, 6:] = 0
    reads = []
    for kind in ("hard", "mmoe"):
        for attention in ("sdpa", "eager"):
            torch.manual_seed(0)
            model = build_model(
                ModelConfig(**TINY, attn_implementation=attention),
                tasks_for(tokenizer),
                len(tokenizer),
                tokenizer.pad_token_id,
                sharing=SharingConfig(kind=kind),
            ).eval()
            for mask, has_padding in ((full, False), (padded, True)):
                checked = _encode(model, ids, mask, None)  # transformers reads the mask
                with monkeypatch.context() as patch:
                    patch.setattr(torch.Tensor, "__bool__", lambda t: reads.append(t) or True)
                    known = _encode(model, ids, mask, has_padding)
                assert torch.equal(known, checked), (kind, attention, has_padding)
    assert reads == []  # no Tensor truth test (a device read on a GPU) in any forward
    # the check is real: without the host's answer transformers tests the mask
    with monkeypatch.context() as patch:
        patch.setattr(torch.Tensor, "__bool__", lambda t: reads.append(t) or True)
        _encode(model, ids, full, None)
    assert reads
