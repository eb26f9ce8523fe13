"""Training: the loop, resume, the DeepSpeed engine, checkpoints, run logs, held-out evaluation,
gradient telemetry, adding tasks to a run, and the loss-weighting methods (``weighting/``).
"""
