"""`WordTokenizer`: a word-level tokenizer that circuitry models carry in a small JSON file.

It has the part of the Hugging Face tokenizer interface the rest of circuitry
uses (`encode`, `decode`, `convert_ids_to_tokens`, `bos_token_id`, ...), with
no dependency beyond the standard library.

Splitting: a token is one of the tokenizer's special tokens written out
(`<bos>`), a run of word characters (`\\w+`), or one punctuation character
(anything that is neither a word character nor whitespace). Whitespace only
separates tokens and is never part of one, so `encode(" Mary") ==
encode("Mary")` is one token, and "store," is two ("store", ","). Matching
is exact (case-sensitive); a word outside the vocabulary becomes `<unk>`.

Decoding joins tokens with single spaces, without a space before closing
punctuation (`, . ! ? ; :`), so decode(encode(text)) gives back any text
written that way: "When Mary and John went to the store, John gave a drink
to". A single token decodes to the bare word ("Mary", no leading space).

`encode` never adds special tokens unless asked (`add_special_tokens=True`
puts BOS in front); callers that want BOS prepend it, as the `text` dataset
does.

The file (`tokenizer.json`) is circuitry's own format, marked by its
"format" field so it is never taken for a Hugging Face tokenizer.json:
{"format": "circuitry-wordtok", "version": 1, "tokens": [...],
"special": {"pad": "<pad>", "unk": "<unk>", "bos": "<bos>", "eos": "<eos>"}}.
A token's id is its index in "tokens".
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, overload

from circuitry.errors import ModelLoadError, UsageError
from circuitry.fileio import atomic_write_text

FORMAT = "circuitry-wordtok"
VERSION = 1
FILE = "tokenizer.json"
SPECIAL_ROLES = ("pad", "unk", "bos", "eos")
DEFAULT_SPECIALS = {role: f"<{role}>" for role in SPECIAL_ROLES}
NO_SPACE_BEFORE = frozenset(",.!?;:")
_SINGLE = re.compile(r"\w+|[^\w\s]")
MAX_TOKENS = 1_000_000


def valid_token(token: str) -> bool:
    """A word (`\\w+`) or one punctuation character."""
    return isinstance(token, str) and _SINGLE.fullmatch(token) is not None


class WordTokenizer:
    """Words and punctuation <-> ids; see the module docstring for the rules."""

    def __init__(self, tokens: Sequence[str], special: dict[str, str] | None = None) -> None:
        special = dict(DEFAULT_SPECIALS if special is None else special)
        problem = _problem(list(tokens), special)
        if problem:
            raise UsageError(f"invalid word tokenizer: {problem}")
        self._tokens: tuple[str, ...] = tuple(tokens)
        self._ids = {t: i for i, t in enumerate(self._tokens)}
        self._special = special
        specials = sorted(special.values(), key=len, reverse=True)
        self._split = re.compile("|".join([*map(re.escape, specials), r"\w+", r"[^\w\s]"]))

    @classmethod
    def from_words(cls, words: Iterable[str], special: dict[str, str] | None = None) -> WordTokenizer:
        """The special tokens first (pad, unk, bos, eos), then each distinct word in order of appearance."""
        special = dict(DEFAULT_SPECIALS if special is None else special)
        tokens = [special[r] for r in SPECIAL_ROLES]
        for w in words:
            if w not in tokens:
                tokens.append(w)
        return cls(tokens, special)

    # ------------------------------------------------------------ special tokens
    def _special_id(self, role: str) -> int:
        return self._ids[self._special[role]]

    @property
    def pad_token_id(self) -> int:
        return self._special_id("pad")

    @property
    def unk_token_id(self) -> int:
        return self._special_id("unk")

    @property
    def bos_token_id(self) -> int:
        return self._special_id("bos")

    @property
    def eos_token_id(self) -> int:
        return self._special_id("eos")

    @property
    def bos_token(self) -> str:
        return self._special["bos"]

    @property
    def eos_token(self) -> str:
        return self._special["eos"]

    @property
    def pad_token(self) -> str:
        return self._special["pad"]

    @property
    def unk_token(self) -> str:
        return self._special["unk"]

    @property
    def all_special_ids(self) -> list[int]:
        return [self._special_id(r) for r in SPECIAL_ROLES]

    # ------------------------------------------------------------------- vocab
    @property
    def vocab_size(self) -> int:
        return len(self._tokens)

    def __len__(self) -> int:
        return len(self._tokens)

    def get_vocab(self) -> dict[str, int]:
        return dict(self._ids)

    def __contains__(self, token: object) -> bool:
        return token in self._ids

    def __eq__(self, other: object) -> bool:
        return isinstance(other, WordTokenizer) and (self._tokens, self._special) == (other._tokens, other._special)

    def __hash__(self) -> int:
        return hash(self._tokens)

    def __repr__(self) -> str:
        return f"WordTokenizer({self.vocab_size} tokens)"

    # ---------------------------------------------------------------- encoding
    def tokenize(self, text: str) -> list[str]:
        """The token strings of `text` (before the vocabulary lookup: unknown words stay as written)."""
        if not isinstance(text, str):
            raise UsageError(f"text to tokenize must be a string, got {type(text).__name__}")
        return self._split.findall(text)

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        """Token ids of `text`; unknown words are `unk_token_id`; BOS in front only when asked."""
        unk = self.unk_token_id
        ids = [self._ids.get(t, unk) for t in self.tokenize(text)]
        return [self.bos_token_id, *ids] if add_special_tokens else ids

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict[str, list[int]]:
        """{"input_ids": ids}, as a Hugging Face tokenizer returns for one text."""
        return {"input_ids": self.encode(text, add_special_tokens=add_special_tokens)}

    def convert_tokens_to_ids(self, tokens: str | Sequence[str]) -> int | list[int]:
        """The id of a token (or a list of ids of tokens); unknown tokens are `unk_token_id`."""
        if isinstance(tokens, str):
            return self._ids.get(tokens, self.unk_token_id)
        return [self._ids.get(t, self.unk_token_id) for t in tokens]

    @overload
    def convert_ids_to_tokens(self, ids: int) -> str: ...
    @overload
    def convert_ids_to_tokens(self, ids: Iterable[int]) -> list[str]: ...

    def convert_ids_to_tokens(self, ids):
        """The token of an id (or a list of tokens of ids)."""
        if _scalar(ids):
            return self._token(int(ids))
        return [self._token(int(i)) for i in ids]

    def _token(self, i: int) -> str:
        if not 0 <= i < len(self._tokens):
            raise UsageError(f"token id {i} is outside the tokenizer's vocabulary (0..{len(self._tokens) - 1})")
        return self._tokens[i]

    def decode(self, ids: Iterable[int] | int, skip_special_tokens: bool = False) -> str:
        """Tokens joined by single spaces, with no space before closing punctuation."""
        if _scalar(ids):
            ids = [int(ids)]  # type: ignore[arg-type]
        special = set(self.all_special_ids) if skip_special_tokens else set()
        words = [self._token(int(i)) for i in ids if int(i) not in special]  # type: ignore[union-attr]
        out = ""
        for w in words:
            out += w if not out or w in NO_SPACE_BEFORE else " " + w
        return out

    # -------------------------------------------------------------------- file
    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "version": VERSION, "special": dict(self._special), "tokens": list(self._tokens)}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, ensure_ascii=False) + "\n"

    def save(self, path: str | Path) -> Path:
        """Write the tokenizer to `path` (a file; a directory gets `tokenizer.json` inside)."""
        path = Path(path)
        if path.is_dir():
            path = path / FILE
        return atomic_write_text(path, self.to_json())

    @classmethod
    def from_dict(cls, data: Any, where: str = "tokenizer") -> WordTokenizer:
        """A tokenizer from its JSON value, or a one-line ModelLoadError naming `where`."""
        if not is_word_tokenizer(data):
            raise ModelLoadError(f"{where}: not a circuitry word tokenizer (expected \"format\": \"{FORMAT}\")")
        if data.get("version") != VERSION:
            raise ModelLoadError(f"{where}: word tokenizer version {data.get('version')!r} is not supported "
                                 f"(this circuitry reads version {VERSION})")
        tokens, special = data.get("tokens"), data.get("special")
        problem = _problem(tokens, special)
        if problem:
            raise ModelLoadError(f"{where}: invalid word tokenizer: {problem}")
        return cls(tokens, special)

    @classmethod
    def load(cls, path: str | Path) -> WordTokenizer:
        """Read a tokenizer file (circuitry's format), or a one-line ModelLoadError naming it."""
        from circuitry.model.io import read_json

        path = Path(path)
        return cls.from_dict(read_json(path), str(path))


def _scalar(x: Any) -> bool:
    """An int, or a 0-d tensor or array (one id rather than a sequence of ids)."""
    return isinstance(x, int) or getattr(x, "ndim", None) == 0


def is_word_tokenizer(data: Any) -> bool:
    """Whether a JSON value is marked as circuitry's word tokenizer (not, say, a Hugging Face tokenizer.json)."""
    return isinstance(data, dict) and data.get("format") == FORMAT


def _problem(tokens: Any, special: Any) -> str | None:
    """What is wrong with a token list and special-token map, or None."""
    if not isinstance(tokens, list) or not tokens:
        return "\"tokens\" must be a non-empty list of strings"
    if len(tokens) > MAX_TOKENS:
        return f"{len(tokens):,} tokens is more than {MAX_TOKENS:,}"
    if not isinstance(special, dict) or set(special) != set(SPECIAL_ROLES):
        return f"\"special\" must map exactly {', '.join(SPECIAL_ROLES)} to tokens"
    seen: set[str] = set()
    for i, t in enumerate(tokens):
        if not isinstance(t, str):
            return f"token {i} is not a string ({type(t).__name__})"
        if t in seen:
            return f"token {t!r} occurs twice"
        seen.add(t)
    for role, t in special.items():
        if not isinstance(t, str) or not re.fullmatch(r"<[a-z]+>", t):
            return f"special token {role} must be written <name> (lowercase letters), got {t!r}"
        if t not in seen:
            return f"special token {role} ({t!r}) is not in the tokens"
    if len(set(special.values())) != len(special):
        return "special tokens must be distinct"
    specials = set(special.values())
    for i, t in enumerate(tokens):
        if t not in specials and not valid_token(t):
            return (f"token {i} ({t!r}) is not a word (\\w+) or one punctuation character, so encode could "
                    f"never produce it")
    return None
