"""ernie-cpt: ERNIE 2.0-style continual multi-task pre-training of transformer encoders."""

__version__ = "0.1.0"
