"""The encoder's top layer computed only at the positions the batch's losses read.

A masked-LM loss reads the top layer's output at the masked positions (~15% of the
tokens), a sentence-level loss at each sequence's [CLS] (the pooler's input). Every other
row of the top layer is computed and thrown away. Only the top layer can be skipped: its
keys and values still come from every position of the layer below, so it runs its
queries, attention output and feed-forward network (~85% of a layer's matrix products)
on the read rows only, and attends over every key of their sequence. The result is the
dense computation's at the read rows, up to float summation order (tested with dropout
off; with dropout on, the top layer draws its masks for the rows it computes).

Rows are given per sequence as a (B, m) table of positions (m = the most any sequence
reads; shorter rows padded with position 0), plus which table cells are real. Host code
builds them (``top_row_columns``) so the device never reports how many rows there are.
At 2 layers of the demo model this removes ~25% of the step's arithmetic; at BERT-base
(12 layers) ~5%.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

# Skip the sparse path when the table would cover more than this share of the batch cells.
MAX_TABLE_SHARE = 0.75
TOP_KEYS = ("top_positions", "top_select", "top_rows")


def top_row_columns(rows: Tensor, batch: int, length: int) -> dict[str, Tensor] | None:
    """Host columns for ``sparse_top_layer`` from flat positions ``rows`` into (B*T), or
    None when the rows fill too much of the batch for the sparse path to pay.

    ``top_rows`` (N,): the distinct read positions, sorted; ``top_positions`` (B, m): each
    sequence's read positions (padded with 0); ``top_select`` (N,): the cell of
    ``top_positions`` (flattened) holding each of ``top_rows``.
    """
    rows = torch.unique(rows.long())  # sorted, distinct: each row is written once
    sequence = rows // length
    counts = torch.bincount(sequence, minlength=batch)
    width = max(int(counts.max()), 1) if len(rows) else 1
    if batch * width > MAX_TABLE_SHARE * batch * length:
        return None
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(len(rows)) - starts[sequence]
    positions = torch.zeros(batch, width, dtype=torch.long)
    positions[sequence, rank] = rows % length
    return {"top_positions": positions, "top_select": sequence * width + rank, "top_rows": rows}


def sparse_top_layer(
    layer: nn.Module,
    hidden: Tensor,
    key_mask: Tensor | None,
    positions: Tensor,
    select: Tensor,
    rows: Tensor,
) -> Tensor:
    """transformers' BERT/ERNIE ``layer`` (sdpa attention) over ``hidden`` (B, T, H), computed
    at the rows of ``top_row_columns``; (B, T, H) whose other rows are ``hidden``'s (unread).

    ``key_mask`` (B, T): True at real tokens (None: no padding)."""
    batch, length, size = hidden.shape
    width = positions.shape[1]
    attention = layer.attention.self
    heads, head_size = attention.num_attention_heads, attention.attention_head_size
    picked = hidden.gather(1, positions.unsqueeze(-1).expand(-1, -1, size))  # (B, m, H)
    query = attention.query(picked).view(batch, width, heads, head_size).transpose(1, 2)
    key = attention.key(hidden).view(batch, length, heads, head_size).transpose(1, 2)
    value = attention.value(hidden).view(batch, length, heads, head_size).transpose(1, 2)
    mask = None if key_mask is None else key_mask.bool()[:, None, None, :]  # (B, 1, 1, T)
    context = nn.functional.scaled_dot_product_attention(
        query,
        key,
        value,
        attn_mask=mask,
        dropout_p=attention.dropout.p if attention.training else 0.0,
        scale=attention.scaling,
    )  # (B, heads, m, d)
    context = context.transpose(1, 2).reshape(batch, width, size)
    output = layer.attention.output(context, picked)
    output = layer.feed_forward_chunk(output)  # (B, m, H)
    computed = output.reshape(-1, size).index_select(0, select)  # (N, H): the real cells
    return hidden.reshape(-1, size).index_copy(0, rows, computed).view(batch, length, size)
