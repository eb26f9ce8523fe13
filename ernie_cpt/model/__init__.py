"""The multi-task model: one shared ERNIE encoder (transformers) plus a head per task.

Model code knows nothing of DeepSpeed, ranks or W&B (a test guards this).
"""

from ernie_cpt.model.encoder import (
    MultiTaskModel,
    build_model,
    encoder_config,
    grow_task_embeddings,
)

__all__ = ["MultiTaskModel", "build_model", "encoder_config", "grow_task_embeddings"]
