"""Data preparation: corpus readers, sentence segmentation, tokenizer, per-task datasets, streams.

Nothing here imports the training layer: preparing data needs no engine, model or rank.
"""
