"""``ernie-cpt check`` / ``validate``: every problem listed at once, before any expensive work.

Each invalid config below is one a user could write; the check must name the problem (and
every other one in the same file), in under 5 s, creating no cache or run directory.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import yaml
from helpers import run_cli, tiny_tree

from ernie_cpt.config import ConfigError, load_config
from ernie_cpt.validate import CheckFailed, check, require

# (overrides of the tiny config, a fragment every problem list must contain)
BAD = [
    ({"model": {"hidden_sise": 32}}, 'unknown key model.hidden_sise (did you mean "hidden_size"?)'),
    ({"train": {"lr": "fast"}}, "train.lr: expected a number, got 'fast'"),
    ({"train": {"zero_stage": 5}}, "train.zero_stage must be 0, 1, 2 or 3, got 5"),
    ({"train": {"precision": "fp8"}}, "train.precision must be one of ['fp32', 'bf16', 'fp16']"),
    ({"train": {"lr_decay": "cosin"}}, "got 'cosin' (did you mean \"cosine\"?)"),
    ({"tasks": {"mlm": {}, "sentence_distanse": {}}}, "unknown task 'sentence_distanse'"),
    (
        {"tasks": {"mlm": {"mask_probability": 1.5}}},
        "tasks.mlm: mask_probability must lie in [0.0, 1.0], got 1.5",
    ),
    ({"schedule": {"weighting": "gradnom"}}, "unknown loss weighting 'gradnom'"),
    (
        {"schedule": {"weighting": "dwa", "weighting_options": {"temprature": 2}}},
        "loss weighting 'dwa': unknown key weighting_options.temprature",
    ),
    ({"schedule": {"kind": "pyramid"}}, "schedule: "),
    (
        {"schedule": {"weighting": "pcgrad"}, "train": {"zero_stage": 3}},
        "loss weighting 'pcgrad' does not work at ZeRO-3",
    ),
    (
        {"sharing": {"kind": "mmoe"}, "train": {"zero_stage": 3}},
        "sharing.kind 'mmoe' needs ZeRO stage 0-2",
    ),
    (
        {"train": {"grad_telemetry_every": 5, "zero_stage": 3}},
        "train.grad_telemetry_every needs full parameters",
    ),
    ({"data": {"corpus": "/nonexistent/corpus.jsonl"}}, "no such file or folder"),
    ({"data": {"sentence_splitter": "nltk"}}, "data.sentence_splitter must be one of"),
    ({"modle": {}}, "unknown section 'modle' (did you mean \"model\"?)"),
]


@pytest.fixture(scope="module", autouse=True)
def imported():
    """The imports a check needs (torch, the task and weighting registries), done once: the
    timed part is the check itself. CPU time is measured, so a loaded machine does not fail it."""
    import pretrain_tasks  # noqa: F401
    from ernie_cpt.training import weighting  # noqa: F401


def write_config(tmp_path: Path, **sections) -> Path:
    tree = tiny_tree(**sections)
    tree["data"]["cache_dir"] = str(tmp_path / "cache")
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(tree))
    return path


@pytest.mark.parametrize(("sections", "expected"), BAD, ids=[b[1][:40] for b in BAD])
def test_each_problem_is_named_fast_and_creates_nothing(tmp_path, sections, expected):
    path = write_config(tmp_path, **sections)
    started = time.process_time()
    report = check(path, [], tmp_path / "run")
    seconds = time.process_time() - started
    assert any(expected in problem for problem in report.problems), report.problems
    assert report.config is None
    assert seconds < 5, seconds
    assert not (tmp_path / "cache").exists() and not (tmp_path / "run").exists()


def test_every_problem_is_listed_at_once(tmp_path):
    path = write_config(
        tmp_path,
        model={"hidden_sise": 32},
        train={"zero_stage": 5, "lr_decay": "cosin"},
        tasks={"mlm": {"mask_probability": 1.5}, "sentence_distanse": {}},
        schedule={"weighting": "gradnom"},
        data={"corpus": "/nonexistent/corpus.jsonl"},
    )
    with pytest.raises(CheckFailed) as raised:
        require(path, ["train.micro_batch_size=0"], tmp_path / "run")
    fragments = [
        "model.hidden_sise",
        "train.zero_stage",
        "cosin",
        "tasks.mlm: mask_probability",
        "sentence_distanse",
        "gradnom",
        "/nonexistent/corpus.jsonl",
        "train.micro_batch_size must be at least 1",
    ]
    message = str(raised.value)
    assert message.startswith(f"{len(fragments)} problems in {path}:")
    for fragment in fragments:
        assert fragment in message
    assert isinstance(raised.value, ConfigError)  # the project's user-error type


def test_a_valid_config_passes_and_describes_the_run(tmp_path):
    path = write_config(tmp_path)
    report = check(path, [], tmp_path / "run")
    assert report.problems == []
    assert report.config == load_config(path)
    # cmtl over mlm, sentence_distance with 12 iterations each: 2 stages, 24 steps
    assert report.notes == {"total_steps": 24, "stages": ["stage1", "stage2"], "resume": "new run"}


def test_unreadable_config_and_bad_overrides_are_listed(tmp_path):
    report = check(tmp_path / "missing.yaml", ["train.lr"])
    assert report.problems[0] == f"config file {tmp_path / 'missing.yaml'}: no such file"
    assert report.problems[1] == "--set expects key=value, got 'train.lr'"


def test_tokenizer_path_must_hold_a_tokenizer(tmp_path):
    (tmp_path / "empty").mkdir()
    path = write_config(tmp_path, tokenizer={"path": str(tmp_path / "empty")})
    assert check(path).problems == [
        f"tokenizer.path {tmp_path / 'empty'}: not a directory holding tokenizer.json or vocab.txt"
    ]


def test_a_tokenizer_larger_than_the_checkpoint_vocabulary_is_refused(tmp_path):
    checkpoint = tmp_path / "bert"
    checkpoint.mkdir()
    shape = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2}
    config_json = {"model_type": "bert", "vocab_size": 5, "intermediate_size": 64, **shape}
    (checkpoint / "config.json").write_text(json.dumps(config_json))
    other = tmp_path / "tok"
    other.mkdir()
    (other / "vocab.txt").write_text("\n".join(f"w{i}" for i in range(7)) + "\n")
    path = write_config(
        tmp_path, model={"init_from": str(checkpoint)}, tokenizer={"path": str(other)}
    )
    problems = check(path).problems
    assert problems == [
        f"tokenizer.path {other} has 7 tokens but model.init_from {checkpoint} has 5 embedding "
        "rows: use the checkpoint's own tokenizer"
    ]


def fake_checkpoint(run: Path, step: int, config_tree: dict, world_size: int = 1) -> None:
    """A checkpoint directory as far as the check reads it: the pointer and trainer state."""
    tag = f"step-{step:08d}"
    (run / "checkpoints" / tag).mkdir(parents=True)
    (run / "checkpoints" / "latest").write_text(tag)
    state = {"train_state": {"step": step}, "config": config_tree, "world_size": world_size}
    (run / "checkpoints" / tag / "trainer_state.json").write_text(json.dumps(state))


def test_resume_problems_dropped_tasks_changed_keys_world_size(tmp_path):
    (tmp_path / "old").mkdir()
    saved = load_config(write_config(tmp_path / "old")).to_dict()
    fake_checkpoint(tmp_path / "run", 8, saved, world_size=2)
    path = write_config(tmp_path, tasks={"mlm": {}})
    assert check(path, [], tmp_path / "run").problems == [
        "cannot resume: the config drops tasks of the checkpoint: ['sentence_distance']"
    ]
    path = write_config(tmp_path, train={"micro_batch_size": 8})
    (tmp_path / "cache").mkdir()  # the checkpoint's config names tmp_path/old/cache
    assert check(path, [], tmp_path / "run").problems == [
        "cannot resume: the config differs from the checkpoint's in: train.micro_batch_size",
        "cannot resume: the checkpoint was written by 2 processes and this run has 1; resume "
        "with 2 processes",
    ]


def test_run_directory_rules_without_touching_it(tmp_path):
    path = write_config(tmp_path)
    run = tmp_path / "run"
    assert check(path, [], run, resume="must").problems == [
        f"--resume must: no valid checkpoint under {run / 'checkpoints'}"
    ]
    run.mkdir()
    (run / "metrics.jsonl").write_text("{}\n")
    assert "already holds a run" in check(path, [], run, resume="never").problems[0]
    report = check(path, [], run, resume="never", overwrite=True)
    assert report.problems == [] and report.notes["resume"].startswith("new run (the old one")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml", "run"]
    assert [p.name for p in run.iterdir()] == ["metrics.jsonl"]


def test_output_dir_that_is_a_file_is_refused(tmp_path):
    path = write_config(tmp_path)
    (tmp_path / "file").write_text("x")
    assert check(path, [], tmp_path / "file").problems == [
        f"--output-dir {tmp_path / 'file'} exists and is not a directory"
    ]


@pytest.mark.slow
def test_train_and_prepare_refuse_before_any_corpus_pass(tmp_path):
    path = write_config(
        tmp_path, train={"zero_stage": 5}, tasks={"mlm": {}, "sentence_distanse": {}}
    )
    for command in (
        ["train", str(path), "--output-dir", str(tmp_path / "run")],
        ["prepare", str(path)],
    ):
        result = run_cli(*command, check=False)
        assert result.returncode == 2, result.stderr
        assert "ernie-cpt: error: 2 problems in" in result.stderr
        assert "train.zero_stage" in result.stderr and "sentence_distanse" in result.stderr
        assert "Traceback" not in result.stderr and result.stdout == ""
    assert not (tmp_path / "cache").exists() and not (tmp_path / "run").exists()
    ok = run_cli("check", str(write_config(tmp_path)), "--output-dir", str(tmp_path / "run"))
    assert json.loads(ok.stdout)["total_steps"] == 24
