"""A task file + a model -> `ContrastiveBatch`: tokenization, templates, blocks, named positions.

Every problem is located in the task file (file:line:col) and says what the
tokens are: clean and corrupted prompts of different token lengths, answers
that are not exactly one token, slots without values, positions that do not
exist.

Conventions:
- Text is tokenized with the model's tokenizer, without special tokens; the
  tokenizer's BOS token is put first (`prepend_bos`, default true). Token ids
  are used as written.
- An answer is the text that continues the prompt: it is tokenized after the
  prompt (with a space between them unless the prompt ends with one or the
  answer starts with one), and must be exactly one token.
- A slot's position is its value's last token. A slot used once is named by
  its name (`IO`); a slot used several times by its name and occurrence
  (`S1`, `S2`). `END` is the last position. Names take offsets (`S1+1`).
- Slots filled from the same word list get different words in a prompt; a
  `fresh` corruption takes a word of the slot's list that the prompt does not
  use.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import torch

from circuitry.errors import UsageError, did_you_mean
from circuitry.tasks.batch import END, ContrastiveBatch
from circuitry.tasks.format import SLOT_RE, TaskFile

DEFAULT_N = 32


def build_batch(task: TaskFile, model: Any) -> ContrastiveBatch:
    """The task's clean and corrupted prompts for `model`, as one batch on the model's device."""
    maker = {"prompts": _from_prompts, "template": _from_template, "blocks": _from_blocks}[task.source]
    batch = maker(task, model)
    try:
        model.check_tokens(batch.tokens)
        model.check_tokens(batch.corrupted)
    except UsageError as exc:
        raise task.error((task.source,), str(exc)) from None
    return batch.to(model.device)


# ------------------------------------------------------------------ tokens
class _Tok:
    """The model's tokenizer as the task needs it, with located errors."""

    def __init__(self, task: TaskFile, model: Any, path: tuple, bos: bool = True) -> None:
        self.task, self.model = task, model
        tok = getattr(model, "tokenizer", None)
        if tok is None:
            raise task.error(path, f"this task gives text, and the model {model.source or model.cfg.name} has no "
                                   f"tokenizer: give token ids (prompts: [{{clean: [ids], ...}}]) or blocks")
        self.tok: Any = tok
        bos_id = getattr(tok, "bos_token_id", None)
        self.bos = [bos_id] if bos and isinstance(bos_id, int) else []

    def encode(self, text: str) -> list[int]:
        return [int(t) for t in self.tok.encode(text, add_special_tokens=False)]

    def show(self, ids: Sequence[int]) -> str:
        """Tokens as the tokenizer writes them: ['When', ' Mary', ...]."""
        try:
            pieces = [self.tok.decode([i]) for i in ids]
        except Exception:  # noqa: BLE001 - a tokenizer without decode: show the ids
            return str(list(ids))
        return "[" + ", ".join(repr(p) for p in pieces) + "]"

    def prompt(self, text: str) -> list[int]:
        return self.bos + self.encode(text)

    def answer(self, prompt: str, answer: str, path: tuple) -> int:
        """The one token `answer` is after `prompt`, or an error that shows how it tokenizes."""
        sep = "" if not prompt or prompt[-1].isspace() or not answer or answer[0].isspace() \
            or not answer[0].isalnum() else " "
        before = self.encode(prompt)
        after = self.encode(prompt + sep + answer)
        if after[: len(before)] != before:
            raise self.task.error(path, f"the answer {answer!r} changes how the prompt tokenizes: "
                                        f"{self.show(before[-3:])} becomes {self.show(after[len(before) - 3:])}")
        ids = after[len(before):]
        if len(ids) != 1:
            raise self.task.error(path, f"the answer {answer!r} is {len(ids)} tokens after the prompt: "
                                        f"{self.show(ids)}; an answer must be exactly one token")
        return ids[0]


def _token_id(model: Any, task: TaskFile, value: int, path: tuple) -> int:
    if not 0 <= value < model.cfg.d_vocab:
        raise task.error(path, f"token id {value} is not in the model's vocabulary (0..{model.cfg.d_vocab - 1})")
    return value


def _tensor(rows: list[list[int]]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.long)


# ------------------------------------------------------------------ explicit prompts
def _from_prompts(task: TaskFile, model: Any) -> ContrastiveBatch:
    prompts = task.body
    text = any(isinstance(p["clean"], str) or isinstance(p["corrupted"], str) for p in prompts)
    tok = _Tok(task, model, ("prompts",)) if text else None
    clean: list[list[int]] = []
    corrupted: list[list[int]] = []
    answers: list[int] = []
    wrongs: list[list[int]] = []
    for i, p in enumerate(prompts):
        path = ("prompts", i)
        c = _ids(task, model, tok, p["clean"], (*path, "clean"))
        k = _ids(task, model, tok, p["corrupted"], (*path, "corrupted"))
        if len(c) != len(k):
            show = tok.show if tok is not None else list
            raise task.error(path, f"the clean prompt is {len(c)} tokens and the corrupted one {len(k)}: "
                                   f"{show(c)} vs {show(k)}; they must have the same token length")
        if clean and len(c) != len(clean[0]):
            raise task.error(path, f"this prompt is {len(c)} tokens, the first one {len(clean[0])}: every prompt "
                                   f"of a task has the same token length")
        wrong = p["wrong"] if isinstance(p["wrong"], list) else [p["wrong"]]
        if wrongs and len(wrong) != len(wrongs[0]):
            raise task.error((*path, "wrong"), f"{len(wrong)} wrong answers here, {len(wrongs[0])} in the first "
                                               f"prompt: every prompt gives as many")
        prompt_text = p["clean"] if isinstance(p["clean"], str) else None
        answers.append(_one(task, model, tok, prompt_text, p["answer"], (*path, "answer")))
        wrongs.append([_one(task, model, tok, prompt_text, w, (*path, "wrong", j) if isinstance(p["wrong"], list)
                            else (*path, "wrong")) for j, w in enumerate(wrong)])
        clean.append(c)
        corrupted.append(k)
    texts = tuple(p["clean"] for p in prompts if isinstance(p["clean"], str))
    ctexts = tuple(p["corrupted"] for p in prompts if isinstance(p["corrupted"], str))
    return _batch(task, _tensor(clean), _tensor(corrupted), answers, wrongs, {}, texts, ctexts,
                  f"task {task.name} ({len(prompts)} prompts x {len(clean[0])} tokens)")


def _ids(task: TaskFile, model: Any, tok: _Tok | None, value: Any, path: tuple) -> list[int]:
    if isinstance(value, str):
        assert tok is not None
        ids = tok.prompt(value)
        if not ids:
            raise task.error(path, "the prompt is empty")
        return ids
    return [_token_id(model, task, int(v), (*path, j)) for j, v in enumerate(value)]


def _one(task: TaskFile, model: Any, tok: _Tok | None, prompt: str | None, value: Any, path: tuple) -> int:
    if isinstance(value, int):
        return _token_id(model, task, value, path)
    if tok is None or prompt is None:
        tok = tok or _Tok(task, model, path)
        ids = tok.encode(value)
        if len(ids) != 1:
            raise task.error(path, f"the answer {value!r} is {len(ids)} tokens: {tok.show(ids)}; an answer must be "
                                   f"exactly one token")
        return ids[0]
    return tok.answer(prompt, value, path)


# ------------------------------------------------------------------ templates
def _occurrences(text: str) -> list[str]:
    """Position names of the slot occurrences of a template text, in order: IO, S1, S2, PLACE."""
    slots = SLOT_RE.findall(text)
    counts = {s: slots.count(s) for s in slots}
    seen: dict[str, int] = {}
    names = []
    for s in slots:
        seen[s] = seen.get(s, 0) + 1
        names.append(s if counts[s] == 1 else f"{s}{seen[s]}")
    return names


def _fill(text: str, values: Sequence[str]) -> tuple[str, list[int]]:
    """The text with the i-th slot occurrence replaced by values[i], and where each value ends."""
    out, ends, last = [], [], 0
    for m, value in zip(SLOT_RE.finditer(text), values):
        out.append(text[last: m.start()])
        out.append(value)
        ends.append(sum(len(x) for x in out))
        last = m.end()
    out.append(text[last:])
    return "".join(out), ends


class _Template:
    """The template's slots, word lists and corruption rule, checked against each other."""

    def __init__(self, task: TaskFile) -> None:
        t, self.task = task.body, task
        self.text = t["text"]
        self.slots: dict[str, str] = t["slots"]
        self.words: dict[str, list[str]] = t["words"]
        self.names = _occurrences(self.text)
        self.slot_of = dict(zip(self.names, SLOT_RE.findall(self.text)))
        self.corrupt: dict[str, str] = t.get("corrupt", {})
        self.corrupted_text = t.get("corrupted_text")
        self._check()

    def _check(self) -> None:
        used = SLOT_RE.findall(self.text) + SLOT_RE.findall(self.corrupted_text or "")
        if not SLOT_RE.findall(self.text):
            raise self.task.error(("template", "text"), "the template has no {SLOT}s")
        for s in used:
            if s not in self.slots:
                raise self.task.error(("template", "slots"), f"slot {s!r} of the template has no values: add "
                                                             f"{s}: LIST to slots{did_you_mean(s, self.slots)}")
        for slot, words in self.slots.items():
            if words not in self.words:
                raise self.task.error(("template", "slots", slot), f"slot {slot!r} takes its values from {words!r}, "
                                                                   f"which is not a word list"
                                                                   f"{did_you_mean(words, self.words)}; lists: "
                                                                   f"{', '.join(self.words)}")
        if self.corrupt and self.corrupted_text is not None:
            raise self.task.error(("template", "corrupt"), "give corrupt or corrupted_text, not both", at_key=True)
        if not self.corrupt and self.corrupted_text is None:
            raise self.task.error(("template",), "the template needs a corruption: corrupt: {SLOT: fresh} or "
                                                 "corrupted_text: ...")
        for key, rule in self.corrupt.items():
            if key not in self.names and key not in self.slots:
                raise self.task.error(("template", "corrupt", key), f"{key!r} is not a slot or slot occurrence "
                                      f"of the template{did_you_mean(key, [*self.names, *self.slots])}; it has "
                                      f"{', '.join(dict.fromkeys([*self.names, *self.slot_of.values()]))}",
                                      at_key=True)
            if rule != "fresh" and rule in self.names and rule not in self.slots:
                raise self.task.error(("template", "corrupt", key), f"{rule!r}: a corruption takes fresh, a slot's "
                                                                    f"value or a literal word, not an occurrence")
        for slot, need in self._needed().items():
            have = len(set(self.words[self.slots[slot]]))
            if have < need:
                raise self.task.error(("template", "words", self.slots[slot]),
                                      f"word list {self.slots[slot]!r} has {have} distinct words; the template needs "
                                      f"at least {need} (slots that share it get different words, fresh ones too)")

    def _needed(self) -> dict[str, int]:
        per_list: dict[str, int] = {}
        for words in self.slots.values():
            per_list[words] = per_list.get(words, 0) + 1
        fresh = {words: 0 for words in per_list}
        for key, rule in self.corrupt.items():
            if rule == "fresh":
                fresh[self.slots[self.slot_of.get(key, key)]] += 1
        return {slot: per_list[w] + fresh[w] for slot, w in self.slots.items()}

    def draw(self, rng: random.Random) -> tuple[dict[str, str], list[str], list[str]]:
        """(slot values, clean values per occurrence, corrupted values per occurrence of the corrupted text)."""
        values: dict[str, str] = {}
        taken: dict[str, set[str]] = {}
        for slot, words in self.slots.items():
            choices = [w for w in dict.fromkeys(self.words[words]) if w not in taken.setdefault(words, set())]
            values[slot] = rng.choice(choices)
            taken[words].add(values[slot])

        def fresh(slot: str) -> str:
            words = self.slots[slot]
            word = rng.choice([w for w in dict.fromkeys(self.words[words]) if w not in taken[words]])
            taken[words].add(word)
            return word

        clean = [values[self.slot_of[n]] for n in self.names]
        if self.corrupted_text is not None:
            extra = {s: fresh(s) for s in dict.fromkeys(SLOT_RE.findall(self.corrupted_text)) if s not in values}
            corrupted = [values.get(s, extra.get(s, "")) for s in SLOT_RE.findall(self.corrupted_text)]
            return values, clean, corrupted
        new_slot = {s: self._rule(self.corrupt[s], s, values, fresh) for s in self.slots if s in self.corrupt}
        corrupted = []
        for n in self.names:
            slot = self.slot_of[n]
            if n in self.corrupt:
                corrupted.append(self._rule(self.corrupt[n], slot, values, fresh))
            else:
                corrupted.append(new_slot.get(slot, values[slot]))
        return values, clean, corrupted

    @staticmethod
    def _rule(rule: str, slot: str, values: dict[str, str], fresh) -> str:
        if rule == "fresh":
            return fresh(slot)
        return values.get(rule, rule)  # another slot's value, or a literal word


def _from_template(task: TaskFile, model: Any) -> ContrastiveBatch:
    t = task.body
    tpl = _Template(task)
    tok = _Tok(task, model, ("template", "text"), bos=t.get("prepend_bos", True))
    rng = random.Random(t.get("seed", 0))
    n = t.get("n", DEFAULT_N)
    wrong_templates = t["wrong"] if isinstance(t["wrong"], list) else [t["wrong"]]
    corrupted_src = tpl.corrupted_text if tpl.corrupted_text is not None else tpl.text
    rows: dict[str, list] = {"clean": [], "corrupted": [], "answer": [], "wrong": [], "texts": [], "ctexts": []}
    positions: dict[str, list[int]] = {name: [] for name in tpl.names}
    for _ in range(n):
        values, clean_vals, corrupted_vals = tpl.draw(rng)
        text, ends = _fill(tpl.text, clean_vals)
        ctext, cends = _fill(corrupted_src, corrupted_vals)
        c_ids, k_ids = tok.prompt(text), tok.prompt(ctext)
        pos = [_slot_position(task, tok, text, e, c_ids) for e in ends]
        cpos = [_slot_position(task, tok, ctext, e, k_ids) for e in cends]
        if len(c_ids) != len(k_ids) or (tpl.corrupted_text is None and pos != cpos):
            raise task.error(("template",), f"a clean prompt and its corrupted prompt tokenize differently: "
                                            f"{tok.show(c_ids)} vs {tok.show(k_ids)}; a corruption must keep the "
                                            f"token length and the slots' positions (use words of the same token "
                                            f"length)")
        if rows["clean"] and len(c_ids) != len(rows["clean"][0]):
            raise task.error(("template", "words"), _length_problem(tok, tpl, rows["texts"][0], text,
                                                                    rows["clean"][0], c_ids))
        filled = {k: v for k, v in values.items()}
        rows["answer"].append(tok.answer(text, _fill_answer(task, t["answer"], filled, ("template", "answer")),
                                         ("template", "answer")))
        rows["wrong"].append([tok.answer(text, _fill_answer(task, w, filled, ("template", "wrong")),
                                         ("template", "wrong")) for w in wrong_templates])
        rows["clean"].append(c_ids)
        rows["corrupted"].append(k_ids)
        rows["texts"].append(text)
        rows["ctexts"].append(ctext)
        for name, p in zip(tpl.names, pos):
            positions[name].append(p)
    named = {name: torch.tensor(ps, dtype=torch.long)[:, None] for name, ps in positions.items()}
    return _batch(task, _tensor(rows["clean"]), _tensor(rows["corrupted"]), rows["answer"], rows["wrong"], named,
                  tuple(rows["texts"]), tuple(rows["ctexts"]),
                  f"task {task.name} ({n} prompts x {len(rows['clean'][0])} tokens from a template, seed "
                  f"{t.get('seed', 0)})")


def _slot_position(task: TaskFile, tok: _Tok, text: str, end: int, ids: list[int]) -> int:
    """The index in `ids` (the whole prompt) of the last token of the slot value ending at char `end`."""
    head = tok.prompt(text[:end])
    if ids[: len(head)] != head:
        raise task.error(("template", "text"), f"a slot value does not end at a token boundary in "
                                               f"{text!r}: {tok.show(head[-3:])} is not how the prompt "
                                               f"tokenizes there ({tok.show(ids[len(head) - 3: len(head) + 1])})")
    return len(head) - 1


def _fill_answer(task: TaskFile, template: str, values: dict[str, str], path: tuple) -> str:
    for s in SLOT_RE.findall(template):
        if s not in values:
            raise task.error(path, f"the answer names slot {s!r}, which the template does not have"
                                   f"{did_you_mean(s, values)}")
    return SLOT_RE.sub(lambda m: values[m.group(1)], template)


def _length_problem(tok: _Tok, tpl: _Template, first: str, text: str, a: list[int], b: list[int]) -> str:
    odd = []
    for words in tpl.slots.values():
        counts = {w: len(tok.encode(" " + w)) for w in tpl.words[words]}
        usual = max(set(counts.values()), key=list(counts.values()).count)
        odd += [f"{w!r} ({c} tokens)" for w, c in counts.items() if c != usual]
    which = f"; words of another token length than the rest of their list: {', '.join(dict.fromkeys(odd))}" \
        if odd else ""
    return (f"prompts must all have the same token length, but {first!r} is {len(a)} tokens and {text!r} is "
            f"{len(b)}{which}")


# ------------------------------------------------------------------ blocks of random tokens
def _from_blocks(task: TaskFile, model: Any) -> ContrastiveBatch:
    from circuitry.data import random_ids, special_ids

    b = task.body
    length, n, seed = b["length"], b.get("n", DEFAULT_N), b.get("seed", 0)
    if len(b["clean"]) != len(b["corrupted"]):
        raise task.error(("blocks", "corrupted"), f"the clean prompt has {len(b['clean'])} blocks and the "
                                                  f"corrupted one {len(b['corrupted'])}: they must have as many")
    bos = model.cfg.bos_token_id
    total = (bos is not None) + length * len(b["clean"])
    if total > model.cfg.n_ctx:
        raise task.error(("blocks", "length"), f"{len(b['clean'])} blocks of {length} tokens make {total} positions, "
                                               f"more than the model's context of {model.cfg.n_ctx}")
    from circuitry.budget import require

    require(16 * n * total * (len(b["clean"]) + 1), f"task {task.name}: {n} prompts of {total} tokens")
    gen = torch.Generator().manual_seed(seed)
    names = list(dict.fromkeys([*b["clean"], *b["corrupted"]]))
    blocks = {name: random_ids((n, length), model.cfg.d_vocab, special_ids(model), gen) for name in names}
    start = [] if bos is None else [torch.full((n, 1), bos, dtype=torch.long)]
    clean = torch.cat([*start, *(blocks[x] for x in b["clean"])], dim=1)
    corrupted = torch.cat([*start, *(blocks[x] for x in b["corrupted"])], dim=1)
    first = int(bos is not None)
    positions = {f"B{i + 1}": torch.arange(first + i * length, first + (i + 1) * length)[None].expand(n, -1)
                 for i in range(len(b["clean"]))}
    differ = [i for i, (x, y) in enumerate(zip(b["clean"], b["corrupted"])) if x != y]
    if not differ and not task.read_at:
        raise task.error(("blocks", "corrupted"), "the corrupted blocks are the clean ones: nothing differs")
    # default: the positions whose next token lies in a block that differs
    read = torch.tensor([p - 1 for i in differ for p in range(first + i * length, first + (i + 1) * length)])
    read = read[None].expand(n, -1)
    if task.read_at:
        read = _read_positions(task, clean, corrupted, positions)
    if bool((read >= clean.shape[1] - 1).any()) or bool((read < 0).any()):
        raise task.error(("read_at",), "the metric of a blocks task is read where a next token exists: not at END")
    rows = torch.arange(n)[:, None]
    answer, wrong = clean[rows, read + 1], corrupted[rows, read + 1][..., None]
    return _make(task, clean, corrupted, answer, wrong, read, positions, (), (),
                 f"task {task.name} ({n} prompts: BOS + blocks {' '.join(b['clean'])} vs "
                 f"{' '.join(b['corrupted'])}, {length} tokens each, seed {seed})")


def _read_positions(task: TaskFile, clean: torch.Tensor, corrupted: torch.Tensor,
                    positions: dict[str, torch.Tensor]) -> torch.Tensor:
    probe = _make(task, clean, corrupted, clean[:, :1], clean[:, :1, None], clean[:, :1] * 0, positions, (), (), "")
    parts = []
    for i, item in enumerate(task.read_at):
        try:
            parts.append(probe.resolve(item))
        except UsageError as exc:
            raise task.error(("read_at", i) if len(task.read_at) > 1 else ("read_at",), str(exc)) from None
    return torch.cat(parts, dim=1)


# ------------------------------------------------------------------ the batch
def _batch(task: TaskFile, clean: torch.Tensor, corrupted: torch.Tensor, answers: list[int], wrongs: list[list[int]],
           positions: dict[str, torch.Tensor], texts: tuple, ctexts: tuple, description: str) -> ContrastiveBatch:
    """A batch of prompt tasks: one answer per prompt, read at `read_at` (default END)."""
    read = _read_positions(task, clean, corrupted, positions) if task.read_at else \
        torch.full((clean.shape[0], 1), clean.shape[1] - 1, dtype=torch.long)
    if read.shape[1] != 1:
        raise task.error(("read_at",), f"read_at names {read.shape[1]} positions per prompt; a task with one answer "
                                       f"per prompt reads it at one position")
    answer = torch.tensor(answers, dtype=torch.long)[:, None]
    wrong = torch.tensor(wrongs, dtype=torch.long)[:, None, :]
    return _make(task, clean, corrupted, answer, wrong, read, positions, texts, ctexts, description)


def _make(task: TaskFile, clean: torch.Tensor, corrupted: torch.Tensor, answer: torch.Tensor, wrong: torch.Tensor,
          read: torch.Tensor, positions: dict[str, torch.Tensor], texts: tuple, ctexts: tuple,
          description: str) -> ContrastiveBatch:
    rows = torch.arange(clean.shape[0])[:, None]
    predictable = torch.zeros_like(clean, dtype=torch.bool)
    predictable[rows, read] = True
    return ContrastiveBatch(clean, predictable, torch.zeros_like(predictable), None, description,
                            corrupted=corrupted, answer=answer, wrong=wrong, read=read,
                            positions={END: torch.full((clean.shape[0], 1), clean.shape[1] - 1), **positions},
                            clean_text=texts, corrupted_text=ctexts, task=task.name)
