"""Config: YAML into typed sections, overrides, did-you-mean, fingerprints."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from ernie_cpt.config import (
    ConfigError,
    RunConfig,
    apply_overrides,
    config_from_dict,
    diff_configs,
    load_config,
    parse_override,
    save_config,
)

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", ["demo", "base", "large"])
def test_shipped_configs_load(name):
    config = load_config(REPO / "configs" / f"{name}.yaml")
    assert isinstance(config, RunConfig)
    assert config.tasks  # introduction order kept
    if name == "demo":
        assert config.data.corpus == "builtin:wikipedia-sample" and config.train.precision == "fp32"
        assert list(config.tasks)[0] == "mlm" and len(config.tasks) == 8
    else:
        assert config.train.precision == "bf16"


def test_overrides_are_parsed_as_yaml_and_nested():
    assert parse_override("train.lr=0.5") == (["train", "lr"], 0.5)
    assert parse_override("data.max_documents=null") == (["data", "max_documents"], None)
    assert parse_override("logging.tags=[a, b]") == (["logging", "tags"], ["a", "b"])
    config = load_config(
        REPO / "configs" / "demo.yaml",
        ["train.lr=3e-4", "tasks.mlm.mask_probability=0.2", "data.corpus=/tmp/x.jsonl"],
    )
    assert config.train.lr == 3e-4  # YAML 1.1 reads "3e-4" as a string; numeric fields accept it
    assert config.tasks["mlm"] == {"mask_probability": 0.2}
    assert config.data.corpus == "/tmp/x.jsonl"


@pytest.mark.parametrize(
    ("tree", "message"),
    [
        ({"trian": {}}, "unknown section 'trian' (did you mean \"train\"?)"),
        ({"train": {"lr_rate": 1}}, 'unknown key train.lr_rate (did you mean "lr"?)'),
        ({"train": {"micro_batch_size": "big"}}, "train.micro_batch_size: expected a number"),
        ({"train": {"micro_batch_size": 2.5}}, "train.micro_batch_size: expected an integer"),
        ({"train": {"combine_token_tasks": "yes"}}, "expected true/false"),
        ({"tasks": {}}, "non-empty mapping"),
    ],
)
def test_bad_configs_are_clear_errors(tree, message):
    with pytest.raises(ConfigError) as error:
        config_from_dict(tree)
    assert message in str(error.value)


def test_override_without_equals_is_an_error():
    with pytest.raises(ConfigError, match="key=value"):
        apply_overrides({}, ["train.lr"])


def test_save_round_trip_and_fingerprint(tmp_path):
    config = load_config(REPO / "configs" / "demo.yaml")
    save_config(config, tmp_path / "config.yaml")
    again = load_config(tmp_path / "config.yaml")
    assert again == config
    assert again.fingerprint() == config.fingerprint()
    changed = load_config(tmp_path / "config.yaml", ["train.lr=0.5"])
    assert changed.fingerprint() != config.fingerprint()
    assert changed.fingerprint(["model", "tasks"]) == config.fingerprint(["model", "tasks"])
    assert diff_configs(config.to_dict(), changed.to_dict()) == ["train.lr"]


def test_yaml_is_read_safely(tmp_path):
    path = tmp_path / "evil.yaml"
    path.write_text("train: !!python/object/apply:os.system ['echo hacked']\n")
    with pytest.raises(ConfigError, match="not valid YAML") as raised:  # one line, no traceback
        load_config(path)
    assert isinstance(raised.value.__cause__, yaml.constructor.ConstructorError)


FIXED_SAMPLING = [
    "schedule.kind=multitask",
    "schedule.iterations_per_task=4",
    "schedule.sampling=fixed",
    "schedule.sampling_options={weights: {mlm: 3, sentence_distance: '1'}}",
]


def test_fixed_sampling_with_a_builtin_schedule_from_the_config():
    from ernie_cpt.training.build import schedule_from_config
    from schedules import sample_task

    config = load_config(None, ["tasks=[mlm, sentence_distance]", *FIXED_SAMPLING])
    assert config.schedule.sampling_options == {"weights": {"mlm": 3, "sentence_distance": "1"}}
    schedule = schedule_from_config(config)
    (stage,) = schedule.stages
    assert stage.sampling == "fixed"
    assert dict(stage.sampling_options["weights"]) == {"mlm": 3, "sentence_distance": "1"}
    # The sampler draws among tasks with budget left; once mlm's 4 steps are spent, every
    # remaining step is sentence_distance whatever the weights.
    consumed = {"mlm": 4, "sentence_distance": 0}
    assert {sample_task(stage, consumed, step, 0) for step in range(20)} == {"sentence_distance"}


def test_fixed_sampling_without_weights_is_a_clear_error():
    from ernie_cpt.training.build import schedule_from_config

    config = load_config(None, ["tasks=[mlm, sentence_distance]", *FIXED_SAMPLING[:3]])
    with pytest.raises(ValueError, match="sampling 'fixed' needs sampling_options.weights"):
        schedule_from_config(config)


def test_a_key_added_since_a_run_was_saved_is_not_a_difference():
    """A checkpoint saved before schedule.sampling_options existed still resumes."""
    new = RunConfig().to_dict()
    old = json.loads(json.dumps(new))
    del old["schedule"]["sampling_options"]
    assert new["schedule"]["sampling_options"] == {}
    assert diff_configs(old, new) == []
    changed = json.loads(json.dumps(new))
    changed["schedule"]["sampling_options"] = {"weights": {"mlm": 2}}
    assert diff_configs(old, changed) == ["schedule.sampling_options.weights.mlm"]
    del old["schedule"]["seed"]  # a missing non-empty value still counts
    assert diff_configs(old, new) == ["schedule.seed"]
