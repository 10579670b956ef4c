"""The task file format (`kind: Task`): its schema and its loaded, model-independent form.

```yaml
apiVersion: circuitry/v1
kind: Task
metadata: {name: ioi}
template:                                   # or prompts: [...] or blocks: {...}
  text: "When {IO} and {S} went to the {PLACE}, {S} gave a drink to"
  slots: {IO: names, S: names, PLACE: places}
  words: {names: [Mary, John, Anna], places: [store, park]}
  corrupt: {S2: fresh}                      # the second S becomes a fresh name
  answer: "{IO}"
  wrong: "{S}"
  n: 64
  seed: 0
read_at: END
metric: logit_diff
```

Exactly one of `prompts` (explicit pairs, as text or token ids), `template`
(prompts generated from slots and word lists) or `blocks` (random token
blocks, for models without a tokenizer: `clean: [r, r]`, `corrupted: [r, s]`).
Everything that needs the model (tokenization, lengths, positions) is checked
when the batch is built (`circuitry.tasks.build`), still at file:line:col.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from circuitry.spec.loader import Document, SpecError, load_document, load_file, raise_all
from circuitry.spec.schema import AnyOf, Bool, Field, Int, ListOf, MapOf, Obj, Str, problems

API_VERSION = "circuitry/v1"
SOURCES = ("prompts", "template", "blocks")
MAX_PROMPTS = 100_000
SLOT_RE = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
NAME = r"[A-Za-z_][A-Za-z0-9_]*"


def _metric_check(name: str) -> None:
    from circuitry.plugins import get_manager

    get_manager().get("circuitry_metrics", name, "metric")


IDS = ListOf(Int(minimum=0), min_items=1, doc="token ids")
TEXT_OR_IDS = AnyOf((Str(), IDS), doc="text (for a model with a tokenizer) or token ids")
ONE = AnyOf((Str(), Int(minimum=0)), doc="one token: its text or its id")
ONE_OR_MORE = AnyOf((ONE, ListOf(ONE, min_items=1)), doc="one token or a list of tokens")
POSITION = AnyOf((Str(pattern=rf"{NAME}\s*([+-]\s*\d{{1,6}})?",
                      pattern_doc="a position name (END, S2, IO ...) with an optional offset (S1+1)"),
                  Int()), doc="a position: a name (END, S2 ...), a name with an offset (S1+1) or an index")
POSITIONS = AnyOf((POSITION, ListOf(POSITION, min_items=1)), doc="one position or a list of positions")

PROMPT = Obj({
    "clean": Field(TEXT_OR_IDS, required=True, doc="the clean prompt"),
    "corrupted": Field(TEXT_OR_IDS, required=True, doc="the corrupted prompt: same token length"),
    "answer": Field(ONE, required=True, doc="the right next token after the clean prompt"),
    "wrong": Field(ONE_OR_MORE, required=True, doc="the wrong answer(s) the metric compares with"),
}, doc="one pair of prompts")
TEMPLATE = Obj({
    "text": Field(Str(), required=True, doc="the clean prompt with {SLOT}s"),
    "corrupted_text": Field(Str(), doc="the corrupted prompt with {SLOT}s (default: text with `corrupt` applied)"),
    "slots": Field(MapOf(Str(pattern=NAME, pattern_doc="a word list name"),
                         key=Str(pattern=NAME, pattern_doc="a slot name")), required=True,
                   doc="slot -> the word list its values come from"),
    "words": Field(MapOf(ListOf(Str(pattern=r"\S(.*\S)?", pattern_doc="a word without surrounding spaces"),
                                min_items=1)), required=True, doc="word lists"),
    "corrupt": Field(MapOf(Str(), key=Str(pattern=rf"{NAME}", pattern_doc="a slot or slot occurrence")),
                     doc="slot or occurrence (S2) -> fresh, another slot's name, or a literal word"),
    "answer": Field(Str(), required=True, doc="the right answer, e.g. {IO}"),
    "wrong": Field(AnyOf((Str(), ListOf(Str(), min_items=1))), required=True, doc="the wrong answer(s), e.g. {S}"),
    "n": Field(Int(minimum=1, maximum=MAX_PROMPTS), doc="number of prompts (default 32)"),
    "seed": Field(Int(minimum=0, maximum=2**63 - 1), doc="random seed (default 0)"),
    "prepend_bos": Field(Bool(), doc="prepend the tokenizer's BOS token (default true)"),
}, doc="prompts generated from a template")
BLOCKS = Obj({
    "length": Field(Int(minimum=1, maximum=100_000), required=True, doc="tokens per block"),
    "clean": Field(ListOf(Str(pattern=NAME, pattern_doc="a block name"), min_items=1), required=True,
                   doc="the clean sequence of blocks, e.g. [r, r]"),
    "corrupted": Field(ListOf(Str(pattern=NAME, pattern_doc="a block name"), min_items=1), required=True,
                       doc="the corrupted sequence, e.g. [r, s]: a block name not in clean is a fresh block"),
    "n": Field(Int(minimum=1, maximum=MAX_PROMPTS), doc="number of prompts (default 32)"),
    "seed": Field(Int(minimum=0, maximum=2**63 - 1), doc="random seed (default 0)"),
}, doc="random token blocks (BOS + blocks); the answer at each position is the next clean token, the wrong "
       "answer the next corrupted token")
TASK_SCHEMA = Obj({
    "apiVersion": Field(Str(choices=(API_VERSION,)), required=True),
    "kind": Field(Str(choices=("Task",)), required=True),
    "metadata": Field(Obj({"name": Field(Str(), required=True), "description": Field(Str())}), required=True),
    "prompts": Field(ListOf(PROMPT, min_items=1), doc="explicit pairs of prompts"),
    "template": Field(TEMPLATE),
    "blocks": Field(BLOCKS),
    "read_at": Field(POSITIONS, doc="where the metric is read (default END; blocks: where the next tokens "
                                    "differ)"),
    "metric": Field(Str(check=_metric_check, what="metric"), doc="the task's metric (default logit_diff)"),
}, doc="a contrastive task: clean and corrupted prompts, answers, positions")
# the task's keys that a spec may give inline under `task:`
INLINE_KEYS = ("metadata", *SOURCES, "read_at", "metric")


@dataclass(frozen=True)
class TaskFile:
    """A validated task: its source of prompts and where its parts are written (for located errors)."""

    name: str
    source: str  # prompts, template or blocks
    body: Any  # the prompts list, or the template / blocks mapping, as written
    read_at: tuple = ()  # () = the default for the source
    metric: str = "logit_diff"
    document: Document = field(compare=False, repr=False, default=None)  # type: ignore[assignment]
    root: tuple = ()  # key path of the task inside the document (a spec's inline task: ("task",))
    description: str = ""

    @property
    def file(self) -> str:
        return self.document.file

    def error(self, path: tuple, message: str, at_key: bool = False) -> SpecError:
        return self.document.error((*self.root, *path), message, at_key=at_key)


def _task(doc: Document, data: dict, root: tuple) -> tuple[TaskFile | None, list[SpecError]]:
    given = [s for s in SOURCES if s in data]
    if len(given) != 1:
        what = "none" if not given else " and ".join(given)
        return None, [doc.error(root, f"a task gives exactly one of {', '.join(SOURCES)} (it gives {what})")]
    source = given[0]
    read = data.get("read_at", ())
    read_at = tuple(read) if isinstance(read, list) else (read,) if read != () else ()
    meta = data.get("metadata", {})
    return TaskFile(meta.get("name", "task"), source, data[source], read_at, data.get("metric", "logit_diff"),
                    doc, root, meta.get("description", "")), []


def load_task(path: str | Path | None = None, text: str | None = None) -> TaskFile:
    """Load and validate a task file (or text); every problem raised at once, with file:line:col."""
    doc = load_document(text, "<string>") if text is not None else load_file(path, what="task")  # type: ignore
    found = problems(doc, TASK_SCHEMA)
    raise_all(found)
    task, more = _task(doc, doc.data, ())
    raise_all(more)
    assert task is not None
    return task


INLINE_SCHEMA = Obj({k: TASK_SCHEMA.fields[k] for k in INLINE_KEYS},
                    doc="a task given inline (the keys of a task file without apiVersion and kind)")


def inline_task(doc: Document, root: tuple) -> tuple[TaskFile | None, list[SpecError]]:
    """A task written inside another document (a spec's `task:` mapping) at key path `root`."""
    value: Any = doc.data
    for key in root:
        value = value[key]
    found = problems(doc, INLINE_SCHEMA, value, root)
    if found:
        return None, found
    return _task(doc, {"metadata": {"name": "task"}, **value}, root)


def slots_of(text: str) -> list[str]:
    """The slot names of a template text, in order of appearance (with repeats)."""
    return SLOT_RE.findall(text)
