"""`WordTokenizer`: splitting, round trips, the Hugging Face-style interface, its file, and native model
directories that carry one."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import random_model

from circuitry.errors import ModelLoadError, UsageError
from circuitry.model import load_model_file, save_model
from circuitry.wordtok import FORMAT, WordTokenizer

WORDS = "When Mary and John went to the store , gave a drink . Then had fun at".split()
PROMPT = "When Mary and John went to the store, John gave a drink to"


@pytest.fixture
def tok() -> WordTokenizer:
    return WordTokenizer.from_words(WORDS + ["to"])


def test_special_tokens_come_first(tok):
    assert tok.convert_ids_to_tokens([0, 1, 2, 3]) == ["<pad>", "<unk>", "<bos>", "<eos>"]
    assert (tok.pad_token_id, tok.unk_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 1, 2, 3)
    assert tok.bos_token == "<bos>" and tok.all_special_ids == [0, 1, 2, 3]
    assert tok.vocab_size == len(tok) == 4 + len(set(WORDS + ["to"]))
    assert tok.get_vocab()["Mary"] == tok.convert_tokens_to_ids("Mary") == 5


def test_leading_space_and_punctuation(tok):
    mary = tok.convert_tokens_to_ids("Mary")
    assert tok.encode(" Mary") == tok.encode("Mary") == tok.encode("  Mary\n") == [mary]
    assert tok.tokenize("store, John.") == ["store", ",", "John", "."]
    ids = tok.encode(PROMPT)
    assert tok.convert_ids_to_tokens(ids) == ["When", "Mary", "and", "John", "went", "to", "the", "store", ",",
                                              "John", "gave", "a", "drink", "to"]
    assert tok.encode(PROMPT, add_special_tokens=True) == [tok.bos_token_id, *ids]
    assert tok(PROMPT) == {"input_ids": ids}


@pytest.mark.parametrize("text", [PROMPT, "Then, Mary and John had fun at the store. John gave a drink to",
                                  "Mary", "", "."])
def test_decode_inverts_encode(tok, text):
    assert tok.decode(tok.encode(text)) == text


def test_decode_details(tok):
    mary = tok.convert_tokens_to_ids("Mary")
    assert tok.decode([mary]) == tok.decode(mary) == tok.decode(torch.tensor(mary)) == "Mary"
    assert tok.decode(torch.tensor(tok.encode(PROMPT))) == PROMPT
    assert tok.decode([tok.bos_token_id, mary]) == "<bos> Mary"
    assert tok.decode([tok.bos_token_id, mary], skip_special_tokens=True) == "Mary"
    assert tok.convert_ids_to_tokens(torch.tensor(mary)) == "Mary"
    with pytest.raises(UsageError, match="outside the tokenizer's vocabulary"):
        tok.decode([tok.vocab_size])


def test_unknown_words_and_special_tokens_in_text(tok):
    assert tok.encode("Mary met Zoe") == [tok.convert_tokens_to_ids("Mary"), tok.unk_token_id, tok.unk_token_id]
    assert tok.encode("<bos> Mary<eos>") == [tok.bos_token_id, tok.convert_tokens_to_ids("Mary"), tok.eos_token_id]
    assert tok.tokenize("<foo>") == ["<", "foo", ">"]  # only the tokenizer's own special tokens are special
    assert tok.convert_tokens_to_ids(["Zoe", "Mary"]) == [tok.unk_token_id, 5]


def test_file_round_trip(tok, tmp_path):
    path = tok.save(tmp_path / "tokenizer.json")
    doc = json.loads(path.read_text())
    assert doc["format"] == FORMAT and doc["version"] == 1 and doc["tokens"][:4] == ["<pad>", "<unk>", "<bos>", "<eos>"]
    assert WordTokenizer.load(path) == tok
    assert tok.save(tmp_path) == path  # a directory gets tokenizer.json


@pytest.mark.parametrize("doc, words", [
    ({"version": 1, "tokens": ["a"]}, "not a circuitry word tokenizer"),
    ({"format": FORMAT, "version": 2}, "version 2 is not supported"),
    ({"format": FORMAT, "version": 1, "tokens": [], "special": {}}, "non-empty list"),
    ({"format": FORMAT, "version": 1, "tokens": ["<pad>", "<unk>", "<bos>", "<eos>", "a", "a"],
      "special": {"pad": "<pad>", "unk": "<unk>", "bos": "<bos>", "eos": "<eos>"}}, "'a' occurs twice"),
    ({"format": FORMAT, "version": 1, "tokens": ["<pad>", "<unk>", "<bos>", "<eos>", "two words"],
      "special": {"pad": "<pad>", "unk": "<unk>", "bos": "<bos>", "eos": "<eos>"}}, "encode could never produce"),
    ({"format": FORMAT, "version": 1, "tokens": ["<pad>", "<unk>", "<bos>"],
      "special": {"pad": "<pad>", "unk": "<unk>", "bos": "<bos>", "eos": "<eos>"}}, "is not in the tokens"),
    ({"format": FORMAT, "version": 1, "tokens": ["<pad>", "<unk>", "<bos>", 5],
      "special": {"pad": "<pad>", "unk": "<unk>", "bos": "<bos>", "eos": "<eos>"}}, "not a string"),
])
def test_bad_files_are_one_line_errors(doc, words, tmp_path):
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(ModelLoadError) as info:
        WordTokenizer.load(path)
    assert words in str(info.value) and str(path) in str(info.value) and "\n" not in str(info.value)


def _with_tokenizer(tok, **overrides):
    model = random_model(seed=2, d_vocab=tok.vocab_size, bos_token_id=tok.bos_token_id, **overrides)
    model.tokenizer = tok
    return model


def test_model_directory_carries_the_tokenizer(tok, tmp_path):
    model = _with_tokenizer(tok)
    save_model(model, tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["config.json", "model.safetensors",
                                                                  "tokenizer.json"]
    loaded = load_model_file(tmp_path / "m")
    assert loaded.tokenizer == tok
    ids = loaded.tokenizer.encode(PROMPT)
    with torch.no_grad():
        assert torch.equal(loaded([tok.bos_token_id, *ids]), model([tok.bos_token_id, *ids]))
    # a single file keeps the weights only
    save_model(model, tmp_path / "m.safetensors")
    assert load_model_file(tmp_path / "m.safetensors").tokenizer is None


def test_directories_without_a_word_tokenizer(tok, tmp_path):
    save_model(random_model(seed=2), tmp_path / "plain")
    plain = load_model_file(tmp_path / "plain")
    assert plain.tokenizer is None and "no tokenizer.json" in plain.tokenizer_note
    (tmp_path / "plain" / "tokenizer.json").write_text(json.dumps({"version": "1.0", "model": {"type": "BPE"}}))
    assert load_model_file(tmp_path / "plain").tokenizer is None  # a Hugging Face tokenizer.json is not ours


def test_tokenizer_that_does_not_fit_the_model(tok, tmp_path):
    save_model(_with_tokenizer(tok), tmp_path / "m")
    bigger = WordTokenizer.from_words([*WORDS, "to", *[f"w{i}" for i in range(50)]])
    bigger.save(tmp_path / "m" / "tokenizer.json")
    with pytest.raises(ModelLoadError, match="more than the model's vocabulary"):
        load_model_file(tmp_path / "m")
    other = WordTokenizer([*WORDS, "<pad>", "<unk>", "<bos>", "<eos>"])  # BOS at another id
    other.save(tmp_path / "m" / "tokenizer.json")
    with pytest.raises(ModelLoadError, match="BOS token is id"):
        load_model_file(tmp_path / "m")
