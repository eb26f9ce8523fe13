"""The task registry: class rules checked at registration, entry points, name clashes.

Entry points are real: each test writes a ``*.dist-info`` folder (METADATA +
entry_points.txt) and a plug-in module into a temporary directory put on ``sys.path``,
which ``importlib.metadata`` discovers like any installed distribution.
"""

from __future__ import annotations

import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import pytest

import pretrain_tasks
from pretrain_tasks import ENTRY_POINT_GROUP, TaskRegistrationError, check_task_class
from pretrain_tasks.mlm import MLMTask
from pretrain_tasks.sentence_distance import SentenceDistanceTask


@dataclass(frozen=True)
class NoOptions:
    """No options."""


class SentenceMasker(SentenceDistanceTask):
    """masks_inputs on a sentence-level task."""

    masks_inputs: ClassVar[bool] = True


class TokenWithoutAttach:
    """A token-level task that cannot label another task's batch."""

    name: ClassVar[str] = "token_without_attach"
    family: ClassVar[str] = "word-aware"
    level: ClassVar[str] = "token"
    masks_inputs: ClassVar[bool] = False
    Settings: ClassVar[type] = NoOptions

    def build_examples(self, document, corpus, rng): ...
    def example_columns(self): ...
    def collate(self, examples, generator): ...
    def build_head(self, config): ...
    def loss(self, head, encoded, batch): ...
    def metrics(self, stats): ...


class BadFamily(SentenceDistanceTask):
    """An unknown family."""

    family: ClassVar[str] = "lexical"


class NoFlag(SentenceDistanceTask):
    """masks_inputs missing (None is not a bool)."""

    masks_inputs = None


class PlainSettings(SentenceDistanceTask):
    """Settings that is not a dataclass."""

    Settings: ClassVar[type] = dict


@pytest.mark.parametrize(
    ("cls", "message"),
    [
        (SentenceMasker, 'masks_inputs is only allowed for level "token" tasks'),
        (TokenWithoutAttach, 'level "token" needs an attach(batch, examples, generator) method'),
        (BadFamily, "family must be one of ('baseline', 'word-aware', 'structure-aware', "),
        (NoFlag, "masks_inputs must be True or False, got None"),
        (PlainSettings, "Settings must be a dataclass"),
    ],
)
def test_registration_rejects_classes_that_break_the_rules(cls, message) -> None:
    with pytest.raises(TaskRegistrationError) as error:
        check_task_class(cls)
    assert message in str(error.value)


def test_registration_accepts_every_builtin_and_names_must_match() -> None:
    for name, cls in pretrain_tasks.TASKS.items():
        assert check_task_class(cls, registered_as=name) is cls
    with pytest.raises(TaskRegistrationError, match="registered as 'other' but its name is 'mlm'"):
        check_task_class(MLMTask, registered_as="other")


def install_plugin(root: Path, entries: dict[str, str], module_source: str = "") -> None:
    """A distribution ``fake_plugin`` whose entry points are ``entries`` (name -> target)."""
    info = root / "fake_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fake-plugin\nVersion: 0.1\n")
    lines = [f"[{ENTRY_POINT_GROUP}]"] + [f"{n} = {t}" for n, t in entries.items()]
    (info / "entry_points.txt").write_text("\n".join(lines) + "\n")
    if module_source:
        (root / "fake_plugin_tasks.py").write_text(module_source)


PLUGIN_MODULE = """
from typing import ClassVar
from pretrain_tasks.sentence_distance import SentenceDistanceTask


class Renamed(SentenceDistanceTask):
    name: ClassVar[str] = "renamed_distance"


class Misfiled(SentenceDistanceTask):
    family: ClassVar[str] = "lexical"
    name: ClassVar[str] = "misfiled"
"""


@pytest.fixture
def plugin_root(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    sys.modules.pop("fake_plugin_tasks", None)


def test_entry_point_task_is_registered(plugin_root) -> None:
    install_plugin(plugin_root, {"renamed_distance": "fake_plugin_tasks:Renamed"}, PLUGIN_MODULE)
    tasks = pretrain_tasks.available_tasks()
    assert tasks["renamed_distance"].__name__ == "Renamed"
    assert set(tasks) == {*pretrain_tasks.TASKS, "renamed_distance"}


def test_entry_point_clashing_with_a_builtin_warns_and_the_builtin_wins(plugin_root) -> None:
    install_plugin(plugin_root, {"mlm": "fake_plugin_tasks:Renamed"}, PLUGIN_MODULE)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cls = pretrain_tasks.get_task_class("mlm")
    assert cls is MLMTask
    messages = [str(w.message) for w in caught]
    assert messages == [
        "entry point 'mlm' (fake_plugin_tasks:Renamed) in group 'ernie_cpt.pretrain_tasks' "
        "has the name of a built-in task; the built-in task is used and the entry point ignored"
    ]


def test_entry_point_breaking_the_rules_is_refused_when_loaded(plugin_root) -> None:
    install_plugin(plugin_root, {"misfiled": "fake_plugin_tasks:Misfiled"}, PLUGIN_MODULE)
    with pytest.raises(TaskRegistrationError, match="task 'misfiled': family must be one of"):
        pretrain_tasks.available_tasks()


def test_unknown_task_name_suggests_the_closest() -> None:
    with pytest.raises(ValueError) as error:
        pretrain_tasks.get_task_class("sentence_distanse")
    assert str(error.value).startswith(
        "unknown task 'sentence_distanse' (did you mean \"sentence_distance\"?); known: ["
    )


def test_no_task_module_imports_another_task_module() -> None:
    """Shared code lives in base/packing/spans/masking, so a task can be removed or copied
    as a template without touching the others."""
    import ast

    task_modules = {cls.__module__ for cls in pretrain_tasks.TASKS.values()}
    imports = {}
    for module in sorted(task_modules):
        tree = ast.parse(Path(sys.modules[module].__file__).read_text(encoding="utf-8"))
        found = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
        found |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        imports[module] = sorted(found & (task_modules - {module}))
    assert imports == dict.fromkeys(sorted(task_modules), [])
