"""Output paths are checked before any work starts, the same way in every command, and an interrupted
atomic write (SIGINT, SIGTERM) leaves no temporary file behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import circuitry
from circuitry.cli import main
from circuitry.errors import UsageError
from circuitry.fileio import Terminated, atomic_write, atomic_write_text, check_output

MODEL = "builtin:attn-only-2l"
SPEC = Path(__file__).parents[1] / "specs" / "induction.yaml"
PACKAGE = Path(circuitry.__file__).parent

# command -> (argv with {} for the output path, the option, a good file name); train's --out is a directory
FILE_OUTPUTS = {
    "verify": (["verify", str(SPEC), "--html", "{}"], "--html", "report.html"),
    "scan": (["scan", MODEL, "--html", "{}"], "--html", "scan.html"),
    "show": (["show", MODEL, "--head", "L0H0", "--out", "{}"], "--out", "heads.png"),
    "discover": (["discover", MODEL, "--out", "{}"], "--out", "found.yaml"),
    "track": (["track", "runs/none", "--plot", "{}"], "--plot", "track.png"),
    "patch-html": (["patch", MODEL, "--task", "tasks/none.yaml", "--html", "{}"], "--html", "patch.html"),
    "patch-png": (["patch", MODEL, "--task", "tasks/none.yaml", "--png", "{}"], "--png", "patch.png"),
}
TRAIN = (["train", "--steps", "1", "--out", "{}"], "--out", "run")

# the first step of each command's work: none of them may run when an output path is refused
WORK = ["circuitry.sources.load_model", "circuitry.spec.load_spec", "circuitry.scan.select_detectors",
        "circuitry.discovery.resolve_task", "circuitry.track.plan", "circuitry.train.train",
        "circuitry.report.plots.require", "circuitry.tasks.format.load_task"]


@pytest.fixture
def no_work(monkeypatch):
    """Replace the first step of every command's work by a recorder; the list of steps that ran."""
    calls: list[str] = []
    for target in WORK:
        def record(*args, _name=target, **kwargs):
            calls.append(_name)
            raise AssertionError(f"{_name} ran")
        monkeypatch.setattr(target, record)
    return calls


def refused(argv: list[str], path: Path, capsys, no_work: list[str]) -> str:
    """Run the CLI with {} replaced by `path`; assert exit 2, one error line, no work; the line."""
    rc = main([str(path) if a == "{}" else a for a in argv])
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert no_work == []
    assert err.count("\n") == 0 and "Traceback" not in err
    return err


# ------------------------------------------------------------------ every command, through the CLI
@pytest.mark.parametrize("command", sorted(FILE_OUTPUTS))
def test_file_output_is_an_existing_directory(command, tmp_path, capsys, no_work):
    argv, option, _ = FILE_OUTPUTS[command]
    target = tmp_path / "out"
    target.mkdir()
    err = refused(argv, target, capsys, no_work)
    assert f"{option} {target}: is a directory" in err
    assert list(target.iterdir()) == []


@pytest.mark.parametrize("command", sorted(FILE_OUTPUTS))
def test_file_output_under_a_missing_directory(command, tmp_path, capsys, no_work):
    argv, option, name = FILE_OUTPUTS[command]
    target = tmp_path / "missing" / name
    err = refused(argv, target, capsys, no_work)
    assert f"{option} {target}: no such directory {tmp_path / 'missing'} (create it first)" in err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("command", [*sorted(FILE_OUTPUTS), "train"])
def test_output_under_a_regular_file(command, tmp_path, capsys, no_work):
    argv, option, name = FILE_OUTPUTS.get(command, TRAIN)
    (tmp_path / "file").write_text("x")
    target = tmp_path / "file" / name
    err = refused(argv, target, capsys, no_work)
    assert f"{option} {target}: {tmp_path / 'file'} is not a directory" in err
    assert (tmp_path / "file").read_text() == "x"


@pytest.mark.parametrize("command", [*sorted(FILE_OUTPUTS), "train"])
def test_output_in_an_unwritable_directory(command, tmp_path, capsys, no_work, monkeypatch):
    argv, option, name = FILE_OUTPUTS.get(command, TRAIN)
    monkeypatch.setattr(os, "access", lambda path, mode, **kwargs: False)  # root ignores permissions
    target = tmp_path / name
    err = refused(argv, target, capsys, no_work)
    assert f"{option} {target}: " in err and "not writable (permission denied)" in err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("command", sorted(FILE_OUTPUTS))
def test_file_output_with_a_wrong_suffix(command, tmp_path, capsys, no_work):
    argv, option, name = FILE_OUTPUTS[command]
    target = tmp_path / "out.txt"
    err = refused(argv, target, capsys, no_work)
    assert f"{option} {target}: must end in {Path(name).suffix}" in err


def test_train_out_is_an_existing_file(tmp_path, capsys, no_work):
    target = tmp_path / "run"
    target.write_text("x")
    err = refused(TRAIN[0], target, capsys, no_work)
    assert f"--out {target}: is a file, not a directory" in err


def test_train_out_may_exist_or_be_created_with_its_parents(tmp_path, capsys, no_work):
    """Past the check, train starts its work (here the recorder): an existing directory or missing parents."""
    (tmp_path / "run").mkdir()
    for target in (tmp_path / "run", tmp_path / "a" / "b" / "run"):
        assert main(["train", "--steps", "1", "--out", str(target)]) == 3  # the recorder's AssertionError
        assert no_work == ["circuitry.train.train"]
        no_work.clear()
    assert not (tmp_path / "a").exists()  # created by the writes, not by the check
    capsys.readouterr()


# ------------------------------------------------------------------ check_output itself
def test_check_output_accepts_writable_places(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert check_output("x.html", "--html", (".html",)) == Path("x.html")
    assert check_output(tmp_path / "X.HTM", "--html", (".html",)) == tmp_path / "X.HTM"  # alias, any case
    assert check_output("spec.yml", "--out", (".yaml",)) == Path("spec.yml")
    (tmp_path / "old.png").write_bytes(b"old")
    assert check_output("old.png", "--plot", (".png",)) == Path("old.png")  # replaced when written
    assert check_output("anything", "--out") == Path("anything")  # no suffix asked
    assert check_output("runs/new/deeper", "--out", directory=True) == Path("runs/new/deeper")
    assert list(tmp_path.iterdir()) == [tmp_path / "old.png"]  # the check creates nothing


@pytest.mark.parametrize("text, words", [
    ("", "--out: empty path; give a file name"),
    ("new/", "--out new/: names a directory; give a file name such as new/output.png"),
    ("x.pdf", "--out x.pdf: must end in .png or .html"),
    ("/dev/null", "--out /dev/null: exists and is not a regular file"),
    ("a" * 300 + "/x.png", "cannot be written (File name too long)"),
])
def test_check_output_messages(text, words, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UsageError) as info:
        check_output(text, "--out", (".png", ".html"))
    assert words in str(info.value) and "\n" not in str(info.value)


def test_directory_output_in_an_unwritable_place(tmp_path, monkeypatch):
    unwritable = {tmp_path}
    monkeypatch.setattr(os, "access", lambda path, mode, **kwargs: Path(path) not in unwritable)
    with pytest.raises(UsageError, match=f"cannot create it: directory {tmp_path} is not writable"):
        check_output(tmp_path / "a" / "run", "--out", directory=True)
    (tmp_path / "run").mkdir()
    unwritable.add(tmp_path / "run")
    with pytest.raises(UsageError, match="run: directory is not writable"):
        check_output(tmp_path / "run", "--out", directory=True)


# ------------------------------------------------------------------ interrupted writes
# a child that imports circuitry.fileio without circuitry/__init__ (and torch), then writes `target`
# with a write function that writes part of the file, says so in `started`, then waits to be killed
CHILD = textwrap.dedent("""
    import os, signal, sys, time, types
    from pathlib import Path

    package = types.ModuleType("circuitry")
    package.__path__ = [{package!r}]
    sys.modules["circuitry"] = package
    from circuitry.fileio import atomic_write

    signal.signal(signal.SIGINT, signal.default_int_handler)  # even when started with SIGINT ignored
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    target, started, mode = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]

    def write(tmp):
        Path(tmp).write_text("half a file")
        if mode == "external":
            started.write_text("started")
            while True:
                time.sleep(0.05)
        os.kill(os.getpid(), getattr(signal, mode))
        while True:
            time.sleep(0.05)

    atomic_write(target, write)
""")


def run_child(tmp_path: Path, sig: signal.Signals, external: bool) -> tuple[subprocess.Popen, Path]:
    """Start the child writing out/report.html and interrupt it with `sig` mid-write; the finished child."""
    out = tmp_path / "out"
    out.mkdir()
    started = tmp_path / "started"
    mode = "external" if external else sig.name
    child = subprocess.Popen([sys.executable, "-c", CHILD.format(package=str(PACKAGE)),
                              str(out / "report.html"), str(started), mode],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if external:
        while not started.exists():
            assert child.poll() is None, child.communicate()[1].decode()
            os.sched_yield()
        child.send_signal(sig)
    child.communicate(timeout=120)
    return child, out


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
@pytest.mark.parametrize("external", [True, False], ids=["killed", "self"])
def test_interrupted_write_leaves_no_temporary_file(sig, external, tmp_path):
    child, out = run_child(tmp_path, sig, external)
    assert child.returncode == -sig  # the process ends as killed by the signal (shell: 128 + signal)
    assert list(out.iterdir()) == []  # neither the target nor a .report.html.*.tmp


def test_sigterm_handler_is_restored_and_called_after_the_cleanup(tmp_path):
    """A Python SIGTERM handler in place before the write gets the signal after the temporary file is gone."""
    seen = []

    def handler(signum, frame):
        seen.append(sorted(p.name for p in tmp_path.iterdir()))

    def write(tmp):
        Path(tmp).write_text("half")
        os.kill(os.getpid(), signal.SIGTERM)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        atomic_write_text(tmp_path / "ok.txt", "fine")
        assert signal.getsignal(signal.SIGTERM) is handler
        with pytest.raises(Terminated):
            atomic_write(tmp_path / "x.txt", write)
        assert signal.getsignal(signal.SIGTERM) is handler
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert seen == [["ok.txt"]]


def test_save_model_killed_between_its_files_leaves_no_temporary_file(tmp_path):
    """save_model writes the weights, then the config: SIGTERM in the config's write leaves the
    complete weights and no temporary file."""
    code = textwrap.dedent("""
        import os, signal, sys
        from pathlib import Path
        import circuitry.model.io as io
        from circuitry.fileio import atomic_write
        from circuitry.sources import load_model

        signal.signal(signal.SIGTERM, signal.SIG_DFL)

        def killed_text(path, text):
            def write(tmp):
                Path(tmp).write_text(text[: len(text) // 2])
                os.kill(os.getpid(), signal.SIGTERM)
            return atomic_write(path, write)

        io.atomic_write_text = killed_text  # the config, written after the weights

        io.save_model(load_model("builtin:attn-only-2l"), sys.argv[1])
    """)
    run = tmp_path / "run"
    child = subprocess.run([sys.executable, "-c", code, str(run)], check=False, capture_output=True,
                           timeout=120)
    assert child.returncode == -signal.SIGTERM, child.stderr.decode()
    assert sorted(p.name for p in run.iterdir()) == ["model.safetensors"]
