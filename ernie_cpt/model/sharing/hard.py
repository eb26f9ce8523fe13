"""Hard parameter sharing (Caruana, "Multitask Learning", Machine Learning 28, 1997): every
task reads the same encoder output; only the heads are task-specific.

This is ernie-cpt's default and builds nothing: ``MultiTaskModel`` runs the whole encoder
as before (same parameters, same initialisation order, same forward), so runs with
``sharing.kind: hard`` are bit for bit the runs before sharing architectures existed.
"""

from __future__ import annotations

KIND = "hard"


def build(*args: object, **kwargs: object) -> None:
    """No sharing module: the heads sit directly on the shared encoder."""
    return None
