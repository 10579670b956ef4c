"""No input a user can type makes a built-in command fail with exit 3 (an internal error) or a traceback.

Command lines are generated from the parser itself: every subcommand with a
random subset of its options, each given a value drawn from what users
actually type (numbers of every size and sign, NaN, text, paths to missing
files, directories and garbage files, model references of every scheme,
data references with wrong and extreme parameters). Each must end with exit
0, 1 or 2, and exit 2 with error lines only. Examples that start real work
that takes long (a long training run) are stopped after a few seconds and
count as passing: they did not fail.

The default run tries a few hundred command lines; the slow test (CI) tries
thousands, with a fixed seed.
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from circuitry.cli import build_parser, main

hypothesis = pytest.importorskip("hypothesis")
st = hypothesis.strategies

REPO = Path(__file__).resolve().parents[1]
SECONDS = 4  # per command line; longer ones ran real work and are stopped


class _Stopped(BaseException):
    """Raised by the alarm: not an Exception, so the CLI's own handlers let it through."""


def _subcommands() -> dict:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    return dict(sub.choices)


SUBCOMMANDS = _subcommands()
NUMBERS = st.one_of(st.integers(-3, 70), st.sampled_from(["0", "-1", "1e9", "nan", "inf", "-inf", "10" * 12,
                                                           "9223372036854775808", "1.5", "0x10", ""]))
MODELS = st.sampled_from(["builtin:attn-only-2l", "builtin:nope", "hf:", "tl:", "nope:x", "", ":", "x" * 300,
                          "missing.safetensors", "DIR", "GARBAGE", "specs/induction.yaml", "file:", "/",
                          "builtin:attn-only-2l\x00", "hf:/nonexistent/dir", "tl:/nonexistent"])
DATA = st.one_of(
    st.sampled_from(["repeated", "periodic", "file", "text", "nope", "", ":", "repeated:", "repeated:seq_len",
                     "repeated:seq_len=0", "repeated:batch=0", "repeated:seq_len=-5", "repeated:seed=-1",
                     "repeated:seed=99999999999999999999", "repeated:n_repeats=1000000",
                     "repeated:batch=1000000000000", "periodic:n_ctx=1", "periodic:n_ctx=2", "periodic:period=-1",
                     "periodic:n_ctx=100000000", "repeated:seq_len=1,n_repeats=1", "file:path=GARBAGE",
                     "file:path=DIR", "x.txt", "x.npy", "x.pt", "GARBAGE.txt", "text:text=\"a, b\"",
                     'text:text="unclosed', "repeated:seq_len=abc", "repeated:seq_len=1.5", "repeated:batch=1"]),
    st.builds(lambda k, v: f"repeated:{k}={v}", st.sampled_from(["batch", "seq_len", "n_repeats", "seed", "x"]),
              NUMBERS))
TEXT = st.one_of(st.text(max_size=12), st.sampled_from(["L0H0", "L1H3", "L9H9", "M0", "L0H0,L1H1", "correct",
                                                         "5-6", "5--6", "-", "a-b", "99", "induction", "nope",
                                                         "previous_token,composition", "composition", ",", "DIR",
                                                         "out.png", "out.html", "out.yaml", "DIR/x.html",
                                                         "GARBAGE/x.png", "cuda", "mps", "cpu", "cuda:7", "meta"]))
VALUES = {"--data": DATA, "--model": MODELS, "--device": TEXT, "--detectors": TEXT, "--head": TEXT,
          "--target": st.one_of(TEXT, NUMBERS), "--task": TEXT, "--tokens": TEXT, "--text": TEXT}
POSITIONAL = {"info": MODELS, "scan": MODELS, "paths": MODELS, "show": MODELS, "discover": MODELS,
              "verify": st.sampled_from(["specs/induction.yaml", "GARBAGE", "DIR", "missing.yaml", "x" * 300]),
              "track": st.sampled_from(["CKPT", "GARBAGE", "DIR", "missing.safetensors", "specs"])}


def _value(action) -> st.SearchStrategy:
    option = action.option_strings[0]
    if action.choices:
        return st.one_of(st.sampled_from(list(action.choices)), TEXT)
    if option in VALUES:
        return VALUES[option]
    if action.type in (int, float):
        return NUMBERS
    return st.one_of(TEXT, MODELS)


@st.composite
def command_lines(draw) -> list[str]:
    name = draw(st.sampled_from(sorted(SUBCOMMANDS)))
    argv = [name]
    positional = [a for a in SUBCOMMANDS[name]._actions if not a.option_strings]
    options = [a for a in SUBCOMMANDS[name]._actions if a.option_strings and a.dest != "help"]
    for _ in positional:
        argv.append(draw(POSITIONAL.get(name, MODELS)))
    for action in draw(st.lists(st.sampled_from(options), max_size=4, unique_by=lambda a: a.dest)):
        argv.append(action.option_strings[-1])
        if action.nargs != 0:
            argv.append(str(draw(_value(action))))
    if name == "train" and "--steps" not in argv:  # keep a valid training run short
        argv += ["--steps", "2"]
    return argv


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A scratch working directory with the files the generated command lines name."""
    (tmp_path / "DIR").mkdir()
    (tmp_path / "GARBAGE").write_bytes(b"\x00\xffnot a model\n" * 10)
    (tmp_path / "GARBAGE.txt").write_text("1 2 x\n")
    (tmp_path / "specs").mkdir()
    (tmp_path / "specs" / "induction.yaml").write_text((REPO / "specs/induction.yaml").read_text())
    ckpt = tmp_path / "CKPT"
    ckpt.mkdir()
    (ckpt / "step-000001.safetensors").write_bytes(
        (REPO / "circuitry/builtin/attn-only-2l/model.safetensors").read_bytes())
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CIRCUITRY_MEMORY_BUDGET", "512MiB")
    # modules imported lazily (the optimiser's, the plots') are imported before any example can be stopped
    # by the alarm halfway through an import, which would leave a broken module behind for later examples
    assert main(["train", "--steps", "1", "--out", str(tmp_path / "warm")]) == 0
    return tmp_path


def _run(argv: list[str], capsys) -> tuple[int | None, str]:
    """(exit code, stderr); None when the command was still working after SECONDS."""
    def stop(signum, frame):
        raise _Stopped

    previous = signal.signal(signal.SIGALRM, stop)
    signal.alarm(SECONDS)
    try:
        try:
            code = main(argv)
        except SystemExit as exc:  # argparse: usage errors
            code = exc.code if isinstance(exc.code, int) else 2
    except _Stopped:
        code = None
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    return code, capsys.readouterr().err


def _check(argv: list[str], capsys) -> None:
    code, err = _run(argv, capsys)
    if code is None:
        return
    assert code in (0, 1, 2), (argv, code, err)
    assert "Traceback" not in err and "internal error" not in err, (argv, err)
    if code == 2:
        assert err.strip(), argv
        lines = [line for line in err.splitlines() if line.strip()]
        assert any(line.startswith(("error:", "usage:", "circuitry: error:")) for line in lines), (argv, err)


def _fuzz(examples: int, derandomize: bool):
    settings = hypothesis.settings(max_examples=examples, deadline=None, derandomize=derandomize, database=None,
                                   suppress_health_check=list(hypothesis.HealthCheck))
    return lambda test: settings(hypothesis.given(argv=command_lines())(test))


@pytest.mark.parametrize("argv", [
    ["train", "--heads", "0", "--steps", "1"],
    ["train", "--seed", "99999999999999999999", "--steps", "1"],
    ["scan", "builtin:attn-only-2l", "--data", "repeated:seed=99999999999999999999"],
    ["scan", "x" * 300],
    ["paths", "builtin:attn-only-2l", "--target", "5--6"],
    ["show", "builtin:attn-only-2l", "--head", "L0H0", "--tokens", "99999999999999999999"],
    ["show", "builtin:attn-only-2l", "--head", "L0H0", "--index", "-1"],
    ["verify", "specs/induction.yaml", "--data", "periodic:n_ctx=1"],
    ["discover", "builtin:attn-only-2l", "--data", "repeated:seq_len=40"],
])
def test_known_hard_command_lines(workdir, capsys, argv):
    _check(argv, capsys)


def test_generated_command_lines(workdir, capsys):
    @_fuzz(examples=60, derandomize=True)
    def prop(argv):
        _check(argv, capsys)

    prop()


@pytest.mark.slow
def test_generated_command_lines_many(workdir, capsys):
    @_fuzz(examples=500, derandomize=True)
    def prop(argv):
        _check(argv, capsys)

    prop()
