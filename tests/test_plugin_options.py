"""One mechanism for plug-in options: tasks, loss weightings and samplers build their
Settings dataclasses like the config's sections (schedules.options), with one hint helper."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

import pretrain_tasks
from ernie_cpt import config as config_module
from ernie_cpt.config import ConfigError, config_from_dict
from ernie_cpt.training.weighting import WEIGHTINGS, build_weighting, option_names
from pretrain_tasks.base import settings_from_options
from pretrain_tasks.knowledge_masking import KnowledgeMaskingSettings
from pretrain_tasks.mlm import MLMSettings
from schedules import Stage, check_sampling, validation
from schedules.options import OptionsError, did_you_mean
from schedules.sampling import SAMPLER_SETTINGS, SAMPLERS

REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- did you mean


@pytest.mark.parametrize(
    ("name", "choices", "hint"),
    [
        ("pcgard", ["fixed", "pcgrad", "dwa"], ' (did you mean "pcgrad"?)'),
        ("lr_rate", ["lr", "seed"], ' (did you mean "lr"?)'),  # the prefix fallback
        ("zzz", ["fixed", "dwa"], ""),
    ],
)
def test_did_you_mean_text(name, choices, hint) -> None:
    assert did_you_mean(name, choices) == hint


def test_one_did_you_mean_helper() -> None:
    assert config_module.did_you_mean is did_you_mean
    assert validation.did_you_mean is did_you_mean
    offenders = []
    for path in [*REPO.glob("ernie_cpt/**/*.py"), *REPO.glob("pretrain_tasks/*.py"),
                 *REPO.glob("schedules/*.py")]:  # fmt: skip
        text = path.read_text(encoding="utf-8")
        if path.name != "options.py" and (
            "get_close_matches" in text or re.search(r"^def did_you_mean", text, re.M)
        ):
            offenders.append(str(path.relative_to(REPO)))
    assert offenders == []


# ---------------------------------------------------------------- task settings


def test_task_options_are_coerced_like_the_config() -> None:
    settings = settings_from_options(MLMSettings, {"mask_probability": "0.2"}, "mlm")
    assert settings == MLMSettings(mask_probability=0.2)
    with pytest.raises(OptionsError, match=r"tasks\.mlm\.mask_probability: expected a number"):
        settings_from_options(MLMSettings, {"mask_probability": "lots"}, "mlm")


def test_unknown_task_option_suggests_the_closest() -> None:
    with pytest.raises(OptionsError) as error:
        settings_from_options(MLMSettings, {"mask_probabilty": 0.2}, "mlm")
    assert str(error.value) == (
        'unknown key tasks.mlm.mask_probabilty (did you mean "mask_probability"?); '
        "known: ['mask_probability', 'replace_probability', 'random_probability']"
    )


def probability_fields() -> list[tuple[str, str]]:
    """(task, field) for every option of a built-in task declared as a probability."""
    return [
        (name, spec.name)
        for name, cls in sorted(pretrain_tasks.TASKS.items())
        for spec in dataclasses.fields(cls.Settings)
        if spec.metadata.get("bounds", {}).get("high") == 1.0
    ]


def test_the_probability_fields_are_the_masking_probabilities() -> None:
    names = ("mask_probability", "replace_probability", "random_probability")
    assert probability_fields() == [
        *[("knowledge_masking", n) for n in names],
        *[("mlm", n) for n in names],
    ]


@pytest.mark.parametrize(("task", "option"), probability_fields())
@pytest.mark.parametrize("value", [1.5, -0.1])
def test_out_of_range_probability_is_refused(task, option, value) -> None:
    cls = pretrain_tasks.TASKS[task].Settings
    with pytest.raises(OptionsError) as error:
        settings_from_options(cls, {option: value}, task)
    assert str(error.value) == f"tasks.{task}: {option} must lie in [0.0, 1.0], got {value}"
    with pytest.raises(OptionsError):  # built directly, too
        cls(**{option: value})


def test_probability_bounds_are_inclusive() -> None:
    assert MLMSettings(mask_probability=1.0, random_probability=0.0).mask_probability == 1.0
    assert KnowledgeMaskingSettings(mask_probability=0.0).mask_probability == 0.0


def test_config_refuses_out_of_range_task_option_at_build_time(tokenizer) -> None:
    with pytest.raises(ValueError, match=r"mask_probability must lie in \[0.0, 1.0\], got 1.5"):
        pretrain_tasks.build_task("mlm", {"mask_probability": 1.5}, tokenizer, 64)


# ---------------------------------------------------------------- loss weighting settings


def test_every_weighting_declares_settings() -> None:
    for name, cls in WEIGHTINGS.items():
        assert dataclasses.is_dataclass(cls.Settings), name
        assert option_names(name) == [f.name for f in dataclasses.fields(cls.Settings)]
    assert {name: option_names(name) for name in ORIGINAL_WEIGHTINGS} == ORIGINAL_WEIGHTINGS


ORIGINAL_WEIGHTINGS = {
    "dtp": ["gamma", "momentum"],
    "dwa": ["temperature", "window"],
    "fixed": ["weights"],
    "gradnorm": ["alpha"],
    "pcgrad": ["seed"],
    "uncertainty": ["initial_log_variance"],
}


def test_weighting_options_are_coerced() -> None:
    method = build_weighting("dwa", ("a", "b"), {"window": "5", "temperature": 3})
    assert method.window == 5 and type(method.window) is int
    assert method.temperature == 3.0 and type(method.temperature) is float
    fixed = build_weighting("fixed", ("a", "b"), {"weights": {"a": "0.5"}})
    assert fixed.weights == {"a": 0.5, "b": 1.0}


@pytest.mark.parametrize(
    ("name", "options", "message"),
    [
        ("dwa", {"temperature": 0}, "temperature must lie in (0.0, inf), got 0.0"),
        ("dwa", {"window": 0}, "window must lie in [1, inf), got 0"),
        ("dtp", {"momentum": 1.0}, "momentum must lie in [0.0, 1.0), got 1.0"),
        ("dtp", {"gamma": -1}, "gamma must lie in [0.0, inf), got -1.0"),
        ("dwa", {"window": "wide"}, "weighting_options.window: expected a number, got 'wide'"),
        ("dwa", {"temprature": 1}, 'weighting_options.temprature (did you mean "temperature"?)'),
    ],
)
def test_bad_weighting_options_are_clear_errors(name, options, message) -> None:
    with pytest.raises(ValueError) as error:
        build_weighting(name, ("a", "b"), options)
    assert message in str(error.value)
    assert str(error.value).startswith(f"loss weighting {name!r}: ")


# ---------------------------------------------------------------- sampler settings


def test_every_sampler_declares_settings() -> None:
    assert set(SAMPLER_SETTINGS) == set(SAMPLERS)
    assert {n: [f.name for f in dataclasses.fields(c)] for n, c in SAMPLER_SETTINGS.items()} == {
        "remaining_budget": [],
        "fixed": ["weights"],
        "temperature": ["temperature", "sizes"],
        "round_robin": [],
    }


@pytest.mark.parametrize(
    ("sampling", "options", "message"),
    [
        ("temperature", {"temperature": -1}, "temperature must lie in (0.0, inf), got -1.0"),
        ("temperature", {"temperature": "hot"}, "temperature: expected a number, got 'hot'"),
        ("fixed", {"weight": {}}, 'sampling_options.weight (did you mean "weights"?)'),
        ("round_robin", {"weights": {}}, "unknown key sampling_options.weights"),
    ],
)
def test_bad_sampling_options_are_clear_errors(sampling, options, message) -> None:
    stage = Stage("s", {"a": 1, "b": 1}, sampling=sampling, sampling_options=options)
    with pytest.raises(ValueError) as error:
        check_sampling(stage)
    assert str(error.value).startswith(f"stage 's' (sampling {sampling!r}): ")
    assert message in str(error.value)


def test_config_sections_and_plugins_share_the_error_type() -> None:
    with pytest.raises(ConfigError) as error:
        config_from_dict({"schedule": {"sampling_options": "fixed"}})
    assert isinstance(error.value, OptionsError)
    assert "schedule.sampling_options: expected a mapping" in str(error.value)
