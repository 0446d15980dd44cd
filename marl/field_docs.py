"""What each config field means, read from the config classes' own source: the comment at the end
of the field's line, or else the block of comment lines right above it. A field whose documentation mentions "choice" is a
reconstruction the papers do not fix (docs/methods.md lists them with their sources).

The source is parsed (``ast`` for the fields, ``tokenize`` for the comments), not matched with a
regular expression, so multi-line defaults, comments above a field and fields of base classes are
all found; ``tests/learners/test_field_docs.py`` checks every field of every learner has one.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import io
import textwrap
import tokenize
from dataclasses import dataclass
from functools import lru_cache


@dataclass(frozen=True)
class FieldDoc:
    name: str
    doc: str  # "" when the field is undocumented
    owner: str  # the class that declares it

    @property
    def is_choice(self) -> bool:
        return "choice" in self.doc.lower()


def _comments(source: str) -> dict[int, str]:
    """Line number (1-based) -> comment text (without '#') for every comment in ``source``."""
    out: dict[int, str] = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            out[tok.start[0]] = tok.string.lstrip("#").strip()
    return out


def _class_docs(cls: type) -> dict[str, str]:
    """The fields this class itself declares, with their documentation."""
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):
        return {}
    tree = ast.parse(source)
    node = next((n for n in tree.body if isinstance(n, ast.ClassDef)), None)
    if node is None:
        return {}
    comments = _comments(source)
    lines = source.splitlines()
    docs: dict[str, str] = {}
    for stmt in node.body:
        if not (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)):
            continue
        trailing = [
            comments[n]
            for n in range(stmt.lineno, (stmt.end_lineno or stmt.lineno) + 1)
            if n in comments and not lines[n - 1].lstrip().startswith("#")
        ]
        above: list[str] = []
        line = stmt.lineno - 1
        while line >= 1 and line in comments and lines[line - 1].lstrip().startswith("#"):
            above.insert(0, comments[line])
            line -= 1
        # The line's own comment is the field's; a block above documents it only when the line has
        # none (with one, the block above is a section heading or shared by several fields).
        docs[stmt.target.id] = " ".join(trailing) if trailing else " ".join(above)
    return docs


@lru_cache(maxsize=None)
def field_docs(cls: type) -> dict[str, FieldDoc]:
    """Every dataclass field of ``cls`` (bases included, subclasses overriding), in field order."""
    declared: dict[str, tuple[str, str]] = {}
    for klass in reversed(cls.__mro__):
        if dataclasses.is_dataclass(klass):
            for name, doc in _class_docs(klass).items():
                if doc or name not in declared:  # a redeclaration without a comment keeps the base's
                    declared[name] = (doc, klass.__name__)
    return {f.name: FieldDoc(f.name, *declared.get(f.name, ("", cls.__name__))) for f in dataclasses.fields(cls)}
