"""A quiet, conventional CLI: flags documented with defaults, common flags on every subcommand,
--version, stdout holding only the result, library chatter in the log file, user errors as
one line and every other exception with its traceback."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging

import pytest
import yaml
from helpers import run_cli, tiny_tree

from ernie_cpt import __version__, cli, logs
from ernie_cpt.errors import ErnieCptError

# The least each subcommand needs to parse.
MINIMAL = {
    "check": ["c.yaml"],
    "train": ["c.yaml", "--output-dir", "d"],
    "prepare": ["c.yaml"],
    "export": ["run", "out"],
    "tasks": [],
    "schedule": ["c.yaml"],
    "compare": ["c.yaml", "--output-dir", "d"],
    "evaluate": ["model", "--data", "f.tsv"],
    "finetune": ["model", "--data", "f.tsv", "--output-dir", "d"],
}


def subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = cli.build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_every_subcommand_is_covered():
    assert sorted(subcommands()) == sorted(MINIMAL)


@pytest.mark.parametrize("name", sorted(MINIMAL))
def test_every_flag_is_documented_and_defaults_are_shown(name):
    parser = subcommands()[name]
    assert parser.formatter_class is argparse.ArgumentDefaultsHelpFormatter
    for action in parser._actions:
        assert action.help and action.help != argparse.SUPPRESS, (name, action.dest)
    text = parser.format_help()
    assert "--threads" in text and "--cache-dir" in text and "--verbose" in text
    if name == "train":
        assert "(default: auto)" in " ".join(text.split())  # --resume's default


@pytest.mark.parametrize("name", sorted(MINIMAL))
def test_common_flags_are_accepted_alike_by_every_subcommand(name):
    flags = ["-v", "--threads", "3", "--cache-dir", "/tmp/c"]
    args = cli.build_parser().parse_args([name, *MINIMAL[name], *flags])
    assert (args.verbose, args.threads, args.cache_dir) == (True, 3, "/tmp/c")
    plain = cli.build_parser().parse_args([name, *MINIMAL[name]])
    assert (plain.verbose, plain.threads, plain.cache_dir) == (False, None, None)
    before = cli.build_parser().parse_args(["-v", name, *MINIMAL[name]])
    assert before.verbose is True  # -v before the subcommand still counts


def test_version(capsys):
    with pytest.raises(SystemExit) as raised:
        cli.main(["--version"])
    assert raised.value.code == 0
    assert capsys.readouterr().out == f"ernie-cpt {__version__}\n"


@contextlib.contextmanager
def restored_logging():
    """logs.setup changes the root and library loggers: put them back for the other tests."""
    names = ["", *logs.LIBRARIES]
    saved = {n: (logging.getLogger(n).handlers[:], logging.getLogger(n).propagate) for n in names}
    level = logging.getLogger().level
    try:
        yield
    finally:
        for name, (handlers, propagate) in saved.items():
            logging.getLogger(name).handlers[:] = handlers
            logging.getLogger(name).propagate = propagate
        logging.getLogger().setLevel(level)
        logs.LOG_FILE.file = None
        logs.LOG_FILE.pending.clear()
        logging.captureWarnings(False)


def test_user_errors_are_one_line_and_other_errors_keep_their_traceback(monkeypatch, capsys):
    def user_error(args):
        raise ErnieCptError("tasks.mlm: something the user can fix")

    def bug(args):
        raise ValueError("an internal bug")

    with restored_logging():
        monkeypatch.setattr(cli, "cmd_tasks", user_error)
        assert cli.main(["tasks"]) == 2
        assert (
            capsys.readouterr().err == "ernie-cpt: error: tasks.mlm: something the user can fix\n"
        )
        monkeypatch.setattr(cli, "cmd_tasks", bug)
        with pytest.raises(ValueError, match="an internal bug"):
            cli.main(["tasks"])


def test_library_chatter_and_prints_go_to_the_log_file(tmp_path, capsys):
    with restored_logging():
        logs.setup(verbose=False)
        logging.getLogger("DeepSpeed").warning("early library warning")  # before a file exists
        logs.attach_file(tmp_path / "run.log")
        with contextlib.redirect_stdout(logs.PrintedLines()):
            print("op built successfully")
        logging.getLogger("bm25s").debug("a debug line")
        logging.getLogger("ernie_cpt.training.loop").info("our own line")
        for handler in logging.getLogger().handlers:
            handler.flush()
        captured = capsys.readouterr()
        text = (tmp_path / "run.log").read_text()
    assert captured.out == ""
    assert "our own line" in captured.err
    assert "early library warning" not in captured.err and "op built" not in captured.err
    assert "WARNING DeepSpeed: early library warning" in text
    assert "INFO stdout: op built successfully" in text
    assert "our own line" in text


@pytest.mark.slow
def test_train_stdout_is_the_json_summary_and_stderr_is_quiet(tmp_path):
    tree = tiny_tree()
    tree["data"]["cache_dir"] = str(tmp_path / "cache")
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(tree))
    run = tmp_path / "run"
    result = run_cli("train", str(config), "--output-dir", str(run), "--max-steps", "2")
    summary = json.loads(result.stdout)  # nothing but the summary on stdout
    assert summary["steps"] == 2 and summary["total_steps"] == 24
    assert summary["stopped_early"] is True and summary["exported"] is False
    assert "stopped early at step 2 of 24 (--max-steps)" in result.stderr
    assert "INFO ernie_cpt.training.run_dir: no checkpoint under" in result.stderr
    assert "WARNING" not in result.stderr, result.stderr
    assert "real_accelerator" in (run / "run.log").read_text()  # DeepSpeed's, in the log


def test_missing_inputs_are_one_line_errors_and_nothing_is_created(tmp_path, capsys):
    with restored_logging():
        assert cli.main(["evaluate", str(tmp_path), "--data", str(tmp_path / "no.tsv")]) == 2
        assert (
            capsys.readouterr().err
            == f"ernie-cpt: error: --data {tmp_path / 'no.tsv'}: no such file\n"
        )
        run = tmp_path / "no-run"
        assert cli.main(["export", str(run), str(tmp_path / "out")]) == 2
        assert (
            capsys.readouterr().err == f"ernie-cpt: error: {run}: no valid checkpoint to export\n"
        )
    assert sorted(p.name for p in tmp_path.iterdir()) == []
