"""Task files (`kind: Task`): explicit prompts, templates and blocks become ContrastiveBatches whose tokens,
positions and answers are checked against an independent construction; malformed task files are exit 2
at the right line and column; task metrics equal hand computations."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from circuitry.cli import main
from circuitry.tasks.build import build_batch
from circuitry.tasks.format import load_task

REPO = Path(__file__).resolve().parents[1]
WORDS = ["When", "and", "went", "to", "the", "store", "park", "school", ",", "gave", "a", "drink",
         "Mary", "John", "Anna", "Paul", "Kate", "Tom", "had", "fun", "at", "Then", "."]


class Words:
    """A word tokenizer over the shipped model's vocabulary: word i -> id i, BOS 64 (for tests only)."""

    bos_token_id = 64

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return [WORDS.index(w) for w in re.findall(r"\w+|[^\w\s]", text)]

    def decode(self, ids) -> str:
        return " ".join("<bos>" if i == 64 else WORDS[i] for i in ids)


@pytest.fixture
def worded(shipped):
    shipped.tokenizer = Words()
    yield shipped
    shipped.tokenizer = None


def task_file(tmp_path: Path, body: str, name: str = "task.yaml") -> Path:
    path = tmp_path / name
    path.write_text("apiVersion: circuitry/v1\nkind: Task\nmetadata: {name: t}\n" + body)
    return path


IOI = """\
template:
  text: "When {IO} and {S} went to the {PLACE} , {S} gave a drink to"
  slots: {IO: names, S: names, PLACE: places}
  words: {names: [Mary, John, Anna, Paul, Kate, Tom], places: [store, park, school]}
  corrupt: {S2: fresh}
  answer: "{IO}"
  wrong: "{S}"
  n: 16
  seed: 3
"""


# ------------------------------------------------------------------ batches
def test_template_prompts_positions_and_answers(tmp_path, worded):
    batch = build_batch(load_task(task_file(tmp_path, IOI)), worded)
    assert batch.tokens.shape == (16, 15) and batch.corrupted.shape == (16, 15)
    tok = Words()
    for i, text in enumerate(batch.clean_text):
        words = text.split()
        io, s = words[1], words[3]
        assert words[9] == s and io != s  # S occurs twice, IO once, different names
        assert batch.tokens[i].tolist() == [64, *tok.encode(text)]
        cwords = batch.corrupted_text[i].split()
        assert cwords[:9] == words[:9] and cwords[9] not in (io, s) and cwords[10:] == words[10:]
        # positions: BOS at 0, so word j is at position j + 1
        assert {k: int(v[i, 0]) for k, v in batch.positions.items()} == {"END": 14, "IO": 2, "S1": 4,
                                                                          "PLACE": 8, "S2": 10}
        assert int(batch.answer[i, 0]) == WORDS.index(io) and int(batch.wrong[i, 0, 0]) == WORDS.index(s)
    assert (batch.read == 14).all()
    assert batch.mask(["S1+1", "END"])[0].nonzero().flatten().tolist() == [5, 14]


def test_same_seed_same_prompts_other_seed_other_prompts(tmp_path, worded):
    a = build_batch(load_task(task_file(tmp_path, IOI)), worded)
    b = build_batch(load_task(task_file(tmp_path, IOI)), worded)
    c = build_batch(load_task(task_file(tmp_path, IOI.replace("seed: 3", "seed: 4"))), worded)
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.corrupted, b.corrupted)
    assert not torch.equal(a.tokens, c.tokens)


def test_blocks_are_bos_r_r_against_bos_r_s(shipped):
    batch = build_batch(load_task(REPO / "specs/tasks/induction.yaml"), shipped)
    t, c = batch.tokens, batch.corrupted
    assert t.shape == (32, 21) and (t[:, 0] == 64).all() and (c[:, 0] == 64).all()
    assert torch.equal(t[:, 1:11], t[:, 11:]) and torch.equal(c[:, 1:11], t[:, 1:11])
    assert (c[:, 11:] != t[:, 11:]).float().mean() > 0.9 and not (c == 64)[:, 1:].any()
    assert batch.read[0].tolist() == list(range(10, 20))
    rows = torch.arange(32)[:, None]
    assert torch.equal(batch.answer, t[rows, batch.read + 1])
    assert torch.equal(batch.wrong[..., 0], c[rows, batch.read + 1])


def test_explicit_prompts_as_ids(tmp_path, shipped):
    path = task_file(tmp_path, """\
prompts:
  - {clean: [64, 1, 2, 3, 1], corrupted: [64, 1, 2, 3, 4], answer: 2, wrong: [5, 6]}
  - {clean: [64, 7, 8, 9, 7], corrupted: [64, 7, 8, 9, 4], answer: 8, wrong: [5, 6]}
read_at: END
""")
    batch = build_batch(load_task(path), shipped)
    assert batch.tokens.tolist() == [[64, 1, 2, 3, 1], [64, 7, 8, 9, 7]]
    assert batch.answer.tolist() == [[2], [8]] and batch.wrong.tolist() == [[[5, 6]], [[5, 6]]]


def test_task_metrics_equal_hand_computations(shipped):
    from circuitry.plugins import get_manager

    batch = build_batch(load_task(REPO / "specs/tasks/induction.yaml"), shipped)
    logits = shipped(batch.tokens)  # [batch, pos, vocab]
    rows = torch.arange(batch.tokens.shape[0])[:, None]
    at = logits[rows, batch.read]  # [batch, n_read, vocab]
    right = at.gather(-1, batch.answer[..., None])[..., 0]
    wrong = at.gather(-1, batch.wrong).mean(-1)
    metrics = get_manager().metrics()
    value = lambda name: metrics[name].compute(logits, batch, logits)  # noqa: E731
    assert value("logit_diff") == pytest.approx(float((right - wrong).mean()), abs=1e-5)
    assert value("correct_logit") == pytest.approx(float(right.mean()), abs=1e-5)
    probs = torch.softmax(at, -1).gather(-1, batch.answer[..., None])[..., 0]
    assert value("prob") == pytest.approx(float(probs.mean()), abs=1e-6)
    assert value("loss") == pytest.approx(float(-probs.log().mean()), abs=1e-5)
    assert value("accuracy") == pytest.approx(float((at.argmax(-1) == batch.answer).float().mean()), abs=1e-6)
    ranks = (at > right[..., None]).sum(-1) + 1
    assert value("rank") == pytest.approx(float(ranks.float().mean()), abs=1e-6)
    assert value("kl") == pytest.approx(0.0, abs=1e-6)


def test_a_spec_checks_a_task(tmp_path, capsys):
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"""\
apiVersion: circuitry/v1
kind: CircuitSpec
metadata: {{name: induction-task}}
model: builtin:attn-only-2l
task: {REPO / "specs/tasks/induction.yaml"}
circuit:
  nodes: {{L1H0: induction, L1H1: induction, L1H3: induction}}
checks:
  - {{id: solved, kind: metric, metric: logit_diff, expect: ">= 3"}}
  - {{id: broken, kind: metric, metric: logit_diff, run: corrupted, expect: "< 1"}}
  - {{id: gap, kind: metric, metric: logit_diff, run: difference, expect: ">= 3"}}
""")
    assert main(["verify", str(spec), "--json"]) == 0
    checks = {c["id"]: c for c in json.loads(capsys.readouterr().out)["checks"]}
    clean, corrupted = checks["broken"]["details"]["metric_clean"], checks["broken"]["details"]["metric_corrupted"]
    assert checks["gap"]["value"] == pytest.approx(clean - corrupted)
    assert checks["solved"]["value"] == pytest.approx(clean)


# ------------------------------------------------------------------ malformed task files
HEADER = 3  # the lines task_file() puts first


def _spec_using(task: Path) -> str:
    return f"""\
apiVersion: circuitry/v1
kind: CircuitSpec
metadata: {{name: t}}
model: builtin:attn-only-2l
task: {task}
circuit:
  nodes: {{L1H3: induction}}
checks:
  - {{id: solved, kind: metric, metric: logit_diff, expect: ">= 0"}}
"""


MALFORMED = [
    # (name, body, line in body (1-based), col, message fragment)
    ("no-source", "read_at: END\n", 0, 0, "a task gives exactly one of prompts, template, blocks (it gives none)"),
    ("two-sources", IOI + "blocks: {length: 4, clean: [r, r], corrupted: [r, s]}\n", 0, 0,
     "(it gives template and blocks)"),
    ("unknown-key", IOI.replace("  n: 16", "  count: 16"), 8, 3, "unknown key 'count'"),
    ("slot-without-values", IOI.replace("PLACE: places}", "PLACE: places, X: names}").replace(
        "went to the {PLACE}", "went to the {Y}"), 3, 10, "slot 'Y' of the template has no values"),
    ("unknown-word-list", IOI.replace("PLACE: places}", "PLACE: plaices}"), 3, 39, "not a word list"),
    ("too-few-words", IOI.replace("[Mary, John, Anna, Paul, Kate, Tom]", "[Mary, John]"), 4, 18,
     "has 2 distinct words; the template needs at least 3"),
    ("unknown-occurrence", IOI.replace("{S2: fresh}", "{S3: fresh}"), 5, 13, "'S3' is not a slot or slot occurrence"),
    ("no-corruption", IOI.replace("  corrupt: {S2: fresh}\n", ""), 2, 3, "the template needs a corruption"),
    ("answer-names-no-slot", IOI.replace('answer: "{IO}"', 'answer: "{I0}"'), 6, 11,
     "the answer names slot 'I0'"),
    ("answer-two-tokens", IOI.replace('answer: "{IO}"', 'answer: "{IO} and"'), 6, 11,
     "is 2 tokens after the prompt"),
    ("n-zero", IOI.replace("n: 16", "n: 0"), 8, 6, "expected an integer >= 1, got 0"),
    ("seed-negative", IOI.replace("seed: 3", "seed: -3"), 9, 9, "expected an integer >= 0"),
    ("lengths-differ", "prompts:\n  - {clean: [64, 1, 2], corrupted: [64, 1], answer: 2, wrong: 3}\n", 2, 5,
     "the clean prompt is 3 tokens and the corrupted one 2"),
    ("prompt-lengths-differ", "prompts:\n  - {clean: [64, 1, 2], corrupted: [64, 1, 3], answer: 2, wrong: 3}\n"
                              "  - {clean: [64, 1], corrupted: [64, 2], answer: 2, wrong: 3}\n", 3, 5,
     "this prompt is 2 tokens, the first one 3"),
    ("id-outside-vocab", "prompts:\n  - {clean: [64, 1, 200], corrupted: [64, 1, 3], answer: 2, wrong: 3}\n", 2, 21,
     "token id 200 is not in the model's vocabulary (0..64)"),
    ("answer-outside-vocab", "prompts:\n  - {clean: [64, 1, 2], corrupted: [64, 1, 3], answer: 99, wrong: 3}\n",
     2, 56, "token id 99 is not in the model's vocabulary"),
    ("wrong-count-differs", "prompts:\n  - {clean: [64, 1], corrupted: [64, 2], answer: 2, wrong: [3, 4]}\n"
                            "  - {clean: [64, 1], corrupted: [64, 2], answer: 2, wrong: [3]}\n", 3, 60,
     "1 wrong answers here, 2 in the first prompt"),
    ("text-without-tokenizer", "prompts:\n  - {clean: hello, corrupted: world, answer: 2, wrong: 3}\n", 2, 3,
     "has no tokenizer: give token ids"),
    ("unknown-position", "prompts:\n  - {clean: [64, 1, 2], corrupted: [64, 1, 3], answer: 2, wrong: 3}\n"
                         "read_at: S2\n", 3, 10, "no position 'S2' in this task"),
    ("position-outside", "prompts:\n  - {clean: [64, 1, 2], corrupted: [64, 1, 3], answer: 2, wrong: 3}\n"
                         "read_at: END+2\n", 3, 10, "falls outside the prompt"),
    ("bad-position-syntax", "prompts:\n  - {clean: [64, 1], corrupted: [64, 2], answer: 2, wrong: 3}\n"
                            "read_at: 'S 2 x'\n", 3, 10, "a position name"),
    ("blocks-count-differs", "blocks: {length: 4, clean: [r, r], corrupted: [r]}\n", 1, 47,
     "the clean prompt has 2 blocks and the corrupted one 1"),
    ("blocks-too-long", "blocks: {length: 40, clean: [r, r], corrupted: [r, s]}\n", 1, 18,
     "more than the model's context of 64"),
    ("blocks-nothing-differs", "blocks: {length: 4, clean: [r, r], corrupted: [r, r]}\n", 1, 47,
     "the corrupted blocks are the clean ones"),
    ("blocks-read-at-end", "blocks: {length: 4, clean: [r, r], corrupted: [r, s]}\nread_at: END\n", 2, 10,
     "not at END"),
    ("unknown-metric", IOI + "metric: logitdiff\n", 10, 9, "unknown metric 'logitdiff' (did you mean"),
    ("wrong-kind", "template: [1, 2]\n", 1, 11, "expected a mapping"),
]


@pytest.mark.parametrize("name, body, line, col, fragment", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_task_files_are_located(tmp_path, capsys, name, body, line, col, fragment, monkeypatch):
    task = task_file(tmp_path, body)
    spec = tmp_path / "spec.yaml"
    spec.write_text(_spec_using(task))
    monkeypatch.setattr("circuitry.sources.load_model", _with_words(name != "text-without-tokenizer"))
    code = main(["verify", str(spec)])
    err = capsys.readouterr().err
    assert code == 2, err
    lines = [x for x in err.splitlines() if x.startswith("error:")]
    assert lines and "Traceback" not in err
    expected = f"error: {task}:{line + HEADER if line else 1}:{col if line else 1}: " if line else f"error: {task}:"
    assert lines[0].startswith(expected), (lines, expected)
    assert fragment in lines[0], lines[0]


def _with_words(words: bool):
    """load_model whose shipped model has the test word tokenizer (templates need one)."""
    from circuitry import sources

    real = sources.load_model

    def load(ref, device=None, **options):
        model = real(ref, device=device, **options)
        if words:
            model.tokenizer = Words()
        return model
    return load


def test_a_missing_task_file_is_an_error_at_the_spec(tmp_path, capsys):
    spec = tmp_path / "spec.yaml"
    spec.write_text(_spec_using(tmp_path / "nope.yaml"))
    assert main(["verify", str(spec)]) == 2
    assert f"error: {spec}:5:7: task: no such task file" in capsys.readouterr().err


def test_a_spec_gives_a_task_or_data_not_both(tmp_path, capsys):
    spec = tmp_path / "spec.yaml"
    spec.write_text(_spec_using(REPO / "specs/tasks/induction.yaml") + "data: {name: repeated}\n")
    assert main(["verify", str(spec)]) == 2
    assert "a spec with a task takes its data from the task" in capsys.readouterr().err


def test_a_task_file_as_the_specs_data(tmp_path, capsys):
    """`data: {task: FILE}` is the same as `task: FILE`: the same prompts, the same values."""
    task = REPO / "specs/tasks/induction.yaml"
    as_task, as_data = tmp_path / "a.yaml", tmp_path / "b.yaml"
    as_task.write_text(_spec_using(task))
    as_data.write_text(_spec_using(task).replace(f"task: {task}", f"data: {{task: {task}}}"))
    docs = []
    for spec in (as_task, as_data):
        assert main(["verify", str(spec), "--json"]) == 0
        docs.append(json.loads(capsys.readouterr().out))
    assert docs[0]["data"] == docs[1]["data"] and docs[0]["data"].startswith("task induction-contrastive")
    assert docs[0]["checks"][0]["value"] == docs[1]["checks"][0]["value"] > 3


@pytest.mark.parametrize("data, line, col, fragment", [
    ("data: {task: nope.yaml}", 5, 14, "data.task: no such task file"),
    ("data: {task: TASK, seed: 3}", 5, 20, "data.seed: data with a task takes its prompts from the task: remove seed"),
    ("data: {task: TASK}\nreference_data: {seed: 2}", 6, 1, "reference_data: a spec with a task takes its data"),
])
def test_a_task_as_data_is_checked(tmp_path, capsys, data, line, col, fragment):
    spec = tmp_path / "spec.yaml"
    task = REPO / "specs/tasks/induction.yaml"
    text = _spec_using(task).replace(f"task: {task}", data.replace("TASK", str(task)))
    spec.write_text(text)
    assert main(["verify", str(spec)]) == 2
    err = capsys.readouterr().err
    col = col + (len(str(task)) - 4 if "TASK" in data and col > 14 else 0)
    assert f"error: {spec}:{line}:{col}: {fragment}" in err, err
