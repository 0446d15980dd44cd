"""Every config field of every learner is documented, read from the source as data (the comment on
its line, or the block above it); the report and `reproduce.py --list ALGORITHM` print it."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from dataclasses import dataclass

from marl.field_docs import field_docs
from marl.registry import get_algorithm, list_algorithms
from tests.suites.conftest import REPO


@dataclass
class _Base:
    a: int = 1  # documented on its line
    # documented above,
    # over two lines (*choice*)
    b: float = 2.0
    # Section heading
    c: list[int] = dataclasses.field(default_factory=lambda: [1, 2])  # a multi-line default, comment on its last line
    d: str = "x"


@dataclass
class _Child(_Base):
    d: str = "y"  # the subclass documents what the base left bare
    e: bool = True


def test_comments_on_the_line_or_above_are_read_and_bases_are_included():
    docs = field_docs(_Child)
    assert list(docs) == ["a", "b", "c", "d", "e"]
    assert docs["a"].doc == "documented on its line" and not docs["a"].is_choice
    assert docs["b"].doc == "documented above, over two lines (*choice*)" and docs["b"].is_choice
    assert docs["c"].doc == "a multi-line default, comment on its last line"  # not "Section heading"
    assert docs["d"].doc == "the subclass documents what the base left bare" and docs["d"].owner == "_Child"
    assert docs["e"].doc == ""


def test_every_field_of_every_learner_is_documented():
    missing = {
        name: [f for f, d in field_docs(get_algorithm(name).config_cls).items() if not d.doc]
        for name in list_algorithms()
    }
    assert not {k: v for k, v in missing.items() if v}, missing


def test_list_algorithm_prints_every_field_with_its_meaning_and_choices_marked():
    out = subprocess.run(
        [sys.executable, str(REPO / "reproduce.py"), "--list", "ddn"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    cls = get_algorithm("ddn").config_cls
    for f in dataclasses.fields(cls):
        assert f"  {f.name} (" in out.stdout
    assert "acting (student|teacher|mixed) = 'mixed' [choice]" in out.stdout
    assert "which network collects training data" in out.stdout
    bad = subprocess.run(
        [sys.executable, str(REPO / "reproduce.py"), "--list", "ddnn"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 2 and "unknown algorithm 'ddnn'; valid choices: qmix" in bad.stderr
