"""Safe YAML loading that keeps the line and column of every key and value.

Only YAML's standard scalar types are built (strings, numbers, booleans,
null); any other tag (`!!python/object`, custom tags) is an error, so a spec
can never make circuitry import or run code. Duplicate keys are errors, and
so are documents too large, too deeply nested, or with aliases that refer to
themselves. `SpecErrors` carries every problem of a spec, in line order.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from circuitry.errors import UsageError

Path_ = tuple  # a key path: ("checks", 2, "expect")
_LINE_BREAK = re.compile("\r\n|[\r\n\x85\u2028\u2029]")  # what YAML counts lines by
MAX_NODES = 100_000
MAX_DEPTH = 64  # nesting of lists and mappings
_SAFE_TAGS = {
    "tag:yaml.org,2002:str", "tag:yaml.org,2002:int", "tag:yaml.org,2002:float",
    "tag:yaml.org,2002:bool", "tag:yaml.org,2002:null",
}


@dataclass(frozen=True)
class Mark:
    file: str
    line: int  # 1-based
    col: int  # 1-based

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}"


def one_line(text: str) -> str:
    """`text` with line breaks and other control characters written as escapes (`\\n`, `\\x1b`,
    `\\u2028`), so a message that quotes a spec's text stays one line and cannot drive the terminal."""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() or ch == " " else repr(ch)[1:-1] for ch in text)


class SpecError(UsageError):
    """An error in a spec, located at file:line:col with the key path; always one line (`one_line`)."""

    def __init__(self, mark: Mark | None, path: Path_, message: str) -> None:
        self.mark, self.path, self.message = mark, path, one_line(message)
        where = f"{mark}: " if mark else ""
        key = f"{format_path(path)}: " if path else ""
        super().__init__(one_line(f"{where}{key}{message}"))


class SpecErrors(SpecError):
    """Every problem found in one or more specs, one `SpecError` per line, in file and line order
    (its mark and path are the first one's)."""

    def __init__(self, errors: list[SpecError]) -> None:
        self.errors = sort_errors(errors)
        first = self.errors[0]
        self.mark, self.path, self.message = first.mark, first.path, first.message
        UsageError.__init__(self, "\n".join(str(e) for e in self.errors))


def sort_errors(errors: list[SpecError]) -> list[SpecError]:
    """Unique errors ordered by file, line and column (errors without a mark first)."""
    seen: dict[str, SpecError] = {}
    for e in errors:
        seen.setdefault(str(e), e)
    return sorted(seen.values(), key=lambda e: (e.mark.file, e.mark.line, e.mark.col) if e.mark else ("", 0, 0))


def raise_all(errors: list[SpecError]) -> None:
    """Raise the one error, or all of them together; nothing when the list is empty."""
    if len(errors) == 1:
        raise errors[0]
    if errors:
        raise SpecErrors(errors)


def format_path(path: Path_) -> str:
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


@dataclass(frozen=True)
class Document:
    """Plain data from a YAML file, with the marks of every value (and of every mapping key)."""

    data: Any
    file: str
    marks: dict[Path_, Mark]
    key_marks: dict[Path_, Mark]

    def mark(self, path: Path_) -> Mark | None:
        """The mark of the value at `path`, or of its nearest ancestor."""
        path = tuple(path)
        while path not in self.marks and path:
            path = path[:-1]
        return self.marks.get(path)

    def key_mark(self, path: Path_) -> Mark | None:
        return self.key_marks.get(tuple(path)) or self.mark(path)

    def error(self, path: Path_, message: str, at_key: bool = False) -> SpecError:
        return SpecError(self.key_mark(path) if at_key else self.mark(path), tuple(path), message)


def _tag(tag: str) -> str:
    """A tag as it is written in YAML: '!!python/object' for 'tag:yaml.org,2002:python/object'."""
    return "!!" + tag[len("tag:yaml.org,2002:"):] if tag.startswith("tag:yaml.org,2002:") else tag


def _mark(file: str, m) -> Mark:
    return Mark(file, m.line + 1, m.column + 1)


class _Builder:
    def __init__(self, file: str) -> None:
        self.file = file
        self.marks: dict[Path_, Mark] = {}
        self.key_marks: dict[Path_, Mark] = {}
        self.count = 0
        self.constructor = yaml.SafeLoader("")

    def build(self, node: yaml.Node, path: Path_, open_nodes: tuple = ()) -> Any:
        self.count += 1
        mark = _mark(self.file, node.start_mark)
        if self.count > MAX_NODES:
            raise SpecError(mark, path, f"document too large (over {MAX_NODES} values)")
        if len(open_nodes) >= MAX_DEPTH:
            raise SpecError(mark, path, f"nesting too deep (over {MAX_DEPTH} levels of lists and mappings)")
        if any(node is n for n in open_nodes):
            raise SpecError(mark, path, "this alias refers to a value that contains it (a recursive alias)")
        self.marks[path] = mark
        if isinstance(node, yaml.ScalarNode):
            return self._scalar(node, path)
        open_nodes = (*open_nodes, node)
        if isinstance(node, yaml.SequenceNode):
            if node.tag != "tag:yaml.org,2002:seq":
                raise SpecError(self.marks[path], path, f"unsupported YAML tag {_tag(node.tag)!r}")
            return [self.build(item, (*path, i), open_nodes) for i, item in enumerate(node.value)]
        if isinstance(node, yaml.MappingNode):
            if node.tag != "tag:yaml.org,2002:map":
                raise SpecError(self.marks[path], path, f"unsupported YAML tag {_tag(node.tag)!r}")
            out: dict[str, Any] = {}
            for key_node, value_node in node.value:
                kmark = _mark(self.file, key_node.start_mark)
                if not isinstance(key_node, yaml.ScalarNode) or key_node.tag not in _SAFE_TAGS:
                    raise SpecError(kmark, path, "mapping keys must be plain strings")
                key = self._scalar(key_node, path)
                if key == "<<":
                    raise SpecError(kmark, path, "YAML merge keys ('<<') are not supported in specs")
                key = str(key) if not isinstance(key, str) else key
                key_path = (*path, key)
                if key in out:
                    first = self.key_marks[key_path]
                    raise SpecError(kmark, key_path, f"duplicate key {key!r} (first defined at line {first.line})")
                self.key_marks[key_path] = kmark
                out[key] = self.build(value_node, (*path, key), open_nodes)
            return out
        raise SpecError(self.marks[path], path, "unsupported YAML node")  # pragma: no cover

    def _scalar(self, node: yaml.ScalarNode, path: Path_) -> Any:
        mark = _mark(self.file, node.start_mark)
        if node.tag == "tag:yaml.org,2002:timestamp" and node.style is None:
            return node.value  # an unquoted date (2024-01-01) stays the text it is
        if node.tag not in _SAFE_TAGS:
            raise SpecError(mark, path, f"unsupported YAML tag {_tag(node.tag)!r}: specs hold plain values only "
                                        "(strings, numbers, booleans, lists, mappings)")
        try:
            return self.constructor.construct_object(node, deep=True)
        except Exception:  # noqa: BLE001 - PyYAML raises ValueError, KeyError ... for text that does not fit its tag
            text = node.value if len(node.value) <= 40 else node.value[:37] + "..."
            raise SpecError(mark, path, f"{text!r} cannot be read as {_tag(node.tag)}") from None


def _yaml_problem(exc: yaml.MarkedYAMLError) -> tuple[object, str]:
    """(the mark to report, a readable message) for a YAML syntax error."""
    problem = exc.problem or exc.context or "malformed YAML"
    context, cmark, pmark = exc.context or "", exc.context_mark, exc.problem_mark
    where = lambda m: f"line {m.line + 1}, column {m.column + 1}"  # noqa: E731
    if cmark is not None and context.startswith(("while parsing a flow sequence", "while parsing a flow mapping")):
        opener = "[" if "sequence" in context else "{"
        closer = "]" if opener == "[" else "}"
        found = ("the end of the file" if "<stream end>" in problem
                 else f"{problem.rsplit('got ', 1)[-1]} at {where(pmark)}")
        return cmark, f"this '{opener}' is not closed: expected ',' or '{closer}' but found {found}"
    if cmark is not None and context.startswith("while scanning a quoted scalar"):
        return cmark, f"this quoted string is not closed ({problem} at {where(pmark)})"
    if cmark is not None and context.startswith("while scanning a block scalar"):
        return cmark, ("a value starting with '>' or '|' starts a YAML block of text here; quote it: "
                       "expect: \">= 0.9\"")
    if "'\\t'" in problem:  # PyYAML writes the character with repr()
        return pmark, "a tab character here: indent YAML with spaces, not tabs"
    if problem.startswith("mapping values are not allowed"):
        return pmark, ("a ':' that YAML cannot read here: is this line indented wrongly, or does a value "
                       "contain ': ' and need quotes?")
    if problem.startswith("expected <block end>") or problem.startswith("expected <block mapping start>"):
        return pmark, ("this line does not fit the indentation of the lines above (a list item '- ' and a "
                       "key at the same level, or a wrong indentation?)")
    if problem.startswith("but found another document"):
        return pmark, "a file holds one YAML document, but a second one starts here ('---')"
    return pmark or cmark, problem


def load_document(text: str, file: str = "<string>") -> Document:
    """Parse YAML text into a `Document`; errors carry file:line:col."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except RecursionError:
        raise SpecError(Mark(file, 1, 1), (), f"invalid YAML: nesting too deep (a spec nests at most "
                                              f"{MAX_DEPTH} levels of lists and mappings)") from None
    except yaml.MarkedYAMLError as exc:
        mark, problem = _yaml_problem(exc)
        raise SpecError(_mark(file, mark) if mark else None, (), f"invalid YAML: {problem}") from None
    except yaml.reader.ReaderError as exc:
        breaks = list(_LINE_BREAK.finditer(text, 0, exc.position))
        mark = Mark(file, len(breaks) + 1, exc.position - (breaks[-1].end() if breaks else 0) + 1)
        raise SpecError(mark, (), f"invalid YAML: character #x{exc.character:04x} is not allowed "
                                  f"({exc.reason})") from None
    except yaml.YAMLError as exc:
        raise SpecError(Mark(file, 1, 1), (), f"invalid YAML: {exc}") from None
    if node is None:
        raise SpecError(Mark(file, 1, 1), (), "the file is empty (expected a circuit spec: "
                                              "apiVersion, kind, metadata, model, circuit, checks)")
    builder = _Builder(file)
    try:
        data = builder.build(node, ())
    except yaml.constructor.ConstructorError as exc:
        mark = _mark(file, exc.problem_mark) if exc.problem_mark else None
        raise SpecError(mark, (), f"invalid value: {exc.problem}") from None
    return Document(data, file, builder.marks, builder.key_marks)


def load_file(path: str | Path, what: str = "spec") -> Document:
    path = Path(path)
    try:
        exists, is_dir = path.exists(), path.is_dir()
    except OSError as exc:  # a name too long for the file system, ...
        raise SpecError(None, (), f"cannot read {what} file {str(path)[:80]}: {exc.strerror or exc}") from None
    if not exists:
        raise SpecError(None, (), f"no such {what} file: {path}")
    if is_dir:
        raise SpecError(None, (), f"{path} is a directory, not a {what} file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise SpecError(Mark(str(path), 1, 1), (), "the file is not UTF-8 text") from None
    except OSError as exc:
        raise SpecError(None, (), f"cannot read {what} file {path}: {exc.strerror or exc}") from None
    return load_document(text, str(path))
