"""Gradient telemetry helpers."""

from __future__ import annotations

import pytest
import torch

from ernie_cpt.training.gradient_telemetry import norms_and_cosines


def test_norms_and_cosines_exact():
    norms, cosines = norms_and_cosines(
        {
            "a": torch.tensor([3.0, 4.0]),
            "b": torch.tensor([-3.0, -4.0]),
            "c": torch.tensor([4.0, -3.0]),
        }
    )
    assert norms == {"a": 5.0, "b": 5.0, "c": 5.0}
    assert cosines["a"]["b"] == pytest.approx(-1.0)
    assert cosines["a"]["c"] == pytest.approx(0.0)
    assert cosines["a"]["a"] == pytest.approx(1.0)
    zero_norms, zero_cos = norms_and_cosines({"z": torch.zeros(2), "a": torch.ones(2)})
    assert zero_cos["z"]["a"] == 0.0
