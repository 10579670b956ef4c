"""The synthetic indirect-object (IOI) language: names, templates, prompts, the held-out split.

A prompt is an optional filler prefix (random filler words and a full stop)
followed by one sentence from a template, in which two names appear, one of
them (the subject S) again, and the next token is the other name (the
indirect object IO):

    When Mary and John went to the store, John gave a drink to   -> Mary

Every classic template comes in two orders, ABBA (IO first: "Mary and John
..., John") and BABA (S first: "John and Mary ..., John"). Positions vary
with the prefix length (0..`max_prefix` filler words) and the template, so no
absolute position tells where IO or S is (see `position_spread`).

The held-out split is by name pair: a fixed fifth of the unordered pairs of
names (`held_out_pairs`, chosen with its own seed) never occurs in training
prompts, so held-out prompts put names together that training never showed
together, in any template.
"""

from __future__ import annotations

import itertools
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

from circuitry.wordtok import WordTokenizer

NAMES = ("Mary", "John", "Tom", "Anna", "James", "Sarah", "David", "Laura", "Paul", "Emma",
         "Mark", "Lucy", "Peter", "Alice", "Kevin", "Rachel", "Steven", "Julia", "Daniel", "Kate",
         "Michael", "Sophie", "Brian", "Helen", "Eric", "Grace", "Adam", "Claire", "Frank", "Nina")
PLACES = ("store", "park", "school", "garden", "office", "beach", "market", "station", "library", "cafe")
OBJECTS = ("drink", "book", "ball", "gift", "letter", "key", "ring", "bag", "hat", "flower")
FILLER = ("it", "was", "a", "nice", "day", "the", "sun", "is", "warm", "and", "then", "very", "cold",
          "morning", "rain", "quiet", "late", "early", "so", "time")

# [N1] [N2] [N3] are the three mentions of names, [P] a place, [O] an object. A prompt's order says which
# mention is which name: A = IO, B = S, and the answer (A) last: ABBA = IO S S, BABA = S IO S, BBAA = S S IO.
# Classic templates read naturally as ABBA and BABA (S2 is the last name before END) ...
CLASSIC = (
    ("when-went", "When [N1] and [N2] went to the [P], [N3] gave a [O] to"),
    ("then-fun", "Then, [N1] and [N2] had a lot of fun at the [P]. [N3] gave a [O] to"),
    ("after-went", "After [N1] and [N2] went to the [P], [N3] gave it to"),
    ("while-working", "While [N1] and [N2] were working at the [P], [N3] gave a [O] to"),
    ("then-thinking", "Then, [N1] and [N2] were thinking about going to the [P]. [N3] wanted to give a [O] to"),
    ("when-got", "When [N1] and [N2] got a [O] at the [P], [N3] decided to give it to"),
    ("friends", "Friends [N1] and [N2] went to the [P]. [N3] handed a [O] to"),
    ("busy", "The [P] was busy when [N1] and [N2] arrived. [N3] gave a [O] to"),
)
# ... late-IO templates as BBAA (IO is the last name before END)
LATE_IO = (
    ("had-met", "[N1] had a [O]. [N2] met [N3] at the [P] and gave it to"),
    ("went-saw", "[N1] went to the [P]. There, [N2] saw [N3] and gave a [O] to"),
    ("took-where", "Later, [N1] took a [O] to the [P], where [N2] met [N3] and handed it to"),
)
ORDERS = ("ABBA", "BABA", "BBAA")
HELD_OUT_FRACTION = 0.2
SPLIT_SEED = 12345  # the held-out name pairs do not depend on any training seed
_SLOT = re.compile(r"\[(N1|N2|N3|P|O)\]")
MENTIONS = ("[N1]", "[N2]", "[N3]")


@dataclass(frozen=True)
class Template:
    """A sentence with three name mentions [N1] [N2] [N3], a place [P] and an object [O]; `natural`:
    the orders it reads naturally in."""

    name: str
    text: str
    natural: tuple[str, ...]

    def pieces(self) -> list[str]:
        """Literal tokens and slot markers ("[N1]") in order."""
        out: list[str] = []
        for i, part in enumerate(_SLOT.split(self.text)):
            out += [f"[{part}]"] if i % 2 else re.findall(r"\w+|[^\w\s]", part)
        return out


TEMPLATES = tuple(Template(n, t, ("ABBA", "BABA")) for n, t in CLASSIC)
LATE_IO_TEMPLATES = tuple(Template(n, t, ("BBAA",)) for n, t in LATE_IO)


@dataclass(frozen=True)
class TemplateSet:
    """Templates to draw from, each in its natural orders or (`any_order`) in all three."""

    templates: tuple[Template, ...]
    any_order: bool = False

    def orders(self, template: Template) -> tuple[str, ...]:
        return ORDERS if self.any_order else template.natural


TEMPLATE_SETS = {
    "classic": TemplateSet(TEMPLATES),
    "mixed": TemplateSet(TEMPLATES + LATE_IO_TEMPLATES),
    "any-order": TemplateSet(TEMPLATES + LATE_IO_TEMPLATES, any_order=True),
}


@dataclass(frozen=True)
class IOIPrompt:
    """One prompt: its tokens (BOS first, END last; the answer not included) and where things are."""

    text: str
    tokens: tuple[int, ...]
    template: str
    order: str  # ABBA (IO S S), BABA (S IO S) or BBAA (S S IO)
    io: int  # token id of the indirect object: the answer
    s: int  # token id of the subject: the wrong answer
    io_pos: int
    s1_pos: int
    s2_pos: int
    prefix_len: int

    @property
    def end_pos(self) -> int:
        return len(self.tokens) - 1


def vocabulary() -> list[str]:
    """Every word of the language: names, places, objects, template words, filler."""
    words = [*NAMES, *PLACES, *OBJECTS]
    for t in TEMPLATES + LATE_IO_TEMPLATES:
        words += [p for p in t.pieces() if not p.startswith("[")]
    words += [*FILLER, "."]
    return words


@lru_cache(maxsize=1)
def ioi_tokenizer() -> WordTokenizer:
    """The language's tokenizer: <pad> <unk> <bos> <eos>, then the names, places, objects, other words."""
    return WordTokenizer.from_words(vocabulary())


@lru_cache(maxsize=1)
def _ids() -> dict[str, int]:
    return ioi_tokenizer().get_vocab()


def token_id(word: str) -> int:
    """The id of a word of the language."""
    return _ids()[word]


def held_out_pairs() -> frozenset[frozenset[str]]:
    """The unordered name pairs that only held-out prompts use (a fixed fifth of all pairs)."""
    pairs = [frozenset(p) for p in itertools.combinations(NAMES, 2)]
    random.Random(SPLIT_SEED).shuffle(pairs)
    return frozenset(pairs[: round(HELD_OUT_FRACTION * len(pairs))])


def make_prompt(template: Template, order: str, io: str, s: str, place: str, obj: str,
                prefix: Sequence[str] = ()) -> IOIPrompt:
    """The prompt of one template, order, pair of names, place, object and filler prefix."""
    if order not in ORDERS:
        raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
    fill = {"[P]": place, "[O]": obj, **{m: io if c == "A" else s for m, c in zip(MENTIONS, order)}}
    words = [*prefix, "."] if prefix else []
    start = len(words) + 1  # BOS comes first
    slots = template.pieces()
    ids = [ioi_tokenizer().bos_token_id, *(token_id(w) for w in [*words, *(fill.get(p, p) for p in slots)])]
    at = {p: start + i for i, p in enumerate(slots) if p in MENTIONS}
    io_pos = at[MENTIONS[order.index("A")]]
    s1_pos, s2_pos = (at[m] for m, c in zip(MENTIONS, order) if c == "B")
    return IOIPrompt(text=ioi_tokenizer().decode(ids[1:]), tokens=tuple(ids), template=template.name, order=order,
                     io=token_id(io), s=token_id(s), io_pos=io_pos, s1_pos=s1_pos, s2_pos=s2_pos,
                     prefix_len=len(words))


def sample_prompts(n: int, rng: random.Random, split: str = "train", max_prefix: int = 8,
                   templates: str = "classic") -> list[IOIPrompt]:
    """`n` random prompts of a template set (`TEMPLATE_SETS`) and split ("train": name pairs outside
    `held_out_pairs`; "test": inside)."""
    held = held_out_pairs()
    chosen = TEMPLATE_SETS[templates]
    out: list[IOIPrompt] = []
    while len(out) < n:
        io, s = rng.sample(NAMES, 2)
        if (frozenset((io, s)) in held) != (split == "test"):
            continue
        k = rng.randint(0, max_prefix)
        prefix = [rng.choice(FILLER) for _ in range(k)]
        template = rng.choice(chosen.templates)
        out.append(make_prompt(template, rng.choice(chosen.orders(template)), io, s, rng.choice(PLACES),
                               rng.choice(OBJECTS), prefix))
    return out


def position_spread(prompts: Sequence[IOIPrompt]) -> dict[str, int]:
    """How many distinct positions IO, S1, S2 and END take across the prompts."""
    return {"IO": len({p.io_pos for p in prompts}), "S1": len({p.s1_pos for p in prompts}),
            "S2": len({p.s2_pos for p in prompts}), "END": len({p.end_pos for p in prompts})}


def max_length(max_prefix: int) -> int:
    """The longest prompt with its answer: BOS + prefix and full stop + the longest template + IO."""
    longest = max(len(t.pieces()) for t in TEMPLATES + LATE_IO_TEMPLATES)
    return 1 + (max_prefix + 1 if max_prefix else 0) + longest + 1
