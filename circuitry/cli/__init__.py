"""The `circuitry` command: argument parsing, dispatch, error reporting, exit codes.

Each subcommand lives in a module of this package with `register(subparsers)`
and `run(args, out) -> int`; this is the only room that prints. Exit codes:
0 success, 1 a check failed, 2 usage or input error, 3 internal or plugin error,
130 interrupted (Ctrl-C).

Parsing imports nothing heavy: `--version` is answered before any parser is
built, only the command being run has its module's `register` called (the
others are listed with their module's one-line `HELP`), and torch and the
analysis modules are imported inside each command's `run`.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from circuitry import __version__

# subcommand name -> module in circuitry.cli
COMMANDS = {
    "info": "circuitry.cli.info",
    "models": "circuitry.cli.models",
    "train": "circuitry.cli.train",
    "plugins": "circuitry.cli.plugins",
    "scan": "circuitry.cli.scan",
    "paths": "circuitry.cli.paths",
    "verify": "circuitry.cli.verify",
    "show": "circuitry.cli.show",
    "discover": "circuitry.cli.discover",
    "track": "circuitry.cli.track",
    "patch": "circuitry.cli.patch",
    "attribute": "circuitry.cli.attribute",
    "e2e": "circuitry.cli.e2e",
    "article": "circuitry.cli.article",
}
VERSION = f"circuitry {__version__}"


class _Parser(argparse.ArgumentParser):
    """argparse with exit code 2, a one-line error, and 'did you mean' for a misspelled choice."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        sys.stderr.write(f"circuitry: error: {message}\n")
        raise SystemExit(2)

    def _check_value(self, action: argparse.Action, value: object) -> None:
        from circuitry.errors import did_you_mean

        if action.choices is not None and value not in action.choices:
            choices = [str(c) for c in action.choices]
            raise argparse.ArgumentError(action, f"invalid choice: {value!r}{did_you_mean(str(value), choices)}; "
                                                 f"valid: {', '.join(choices)}")


def build_parser(full: Iterable[str] | None = None) -> argparse.ArgumentParser:
    """The `circuitry` parser. full: the commands whose options are registered (default: all); any other
    command whose module has a one-line `HELP` is only listed, so that its module's dependencies are not
    imported."""
    wanted = set(COMMANDS) if full is None else set(full)
    parser = _Parser(prog="circuitry",
                     description="Find and verify circuits in transformer language models.")
    parser.add_argument("--version", action="version", version=VERSION)
    parser.add_argument("-p", dest="plugin_opts", action="append", default=[], metavar="no:NAME",
                        help="disable a plugin by name (repeatable); also CIRCUITRY_DISABLE_PLUGINS=A,B")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(module_name)
        if name in wanted or not hasattr(module, "HELP"):
            module.register(sub)
        else:
            sub.add_parser(name, help=module.HELP)
    return parser


def command_of(argv: list[str]) -> str | None:
    """The subcommand an argument list names (the first argument that is not an option of `circuitry`
    itself), or None."""
    args = iter(argv)
    for arg in args:
        if arg == "--":
            return next(args, None)
        if arg == "-p":
            next(args, None)
        elif not arg.startswith("-"):
            return arg
    return None


def main(argv: list[str] | None = None) -> int:
    from circuitry.errors import CircuitryError

    argv = sys.argv[1:] if argv is None else list(argv)
    command = command_of(argv)
    if "--version" in argv[: argv.index(command) if command in argv else len(argv)]:
        print(VERSION)  # before any parser is built (no command module is imported); exits as argparse's would
        raise SystemExit(0)
    parser = build_parser([command] if command in COMMANDS else [])
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    from circuitry.cli.output import Output
    from circuitry.diagnostics import collecting

    out = Output(json_mode=getattr(args, "json", False), verbose=getattr(args, "verbose", 0))
    try:
        with collecting() as warnings:
            try:
                _apply_plugin_options(args.plugin_opts)
                with _memory_budget(getattr(args, "memory_budget", None)):
                    return int(args.run(args, out) or 0)
            finally:
                for message in warnings:
                    out.warning(message)
    except CircuitryError as exc:
        out.error(str(exc))
        if os.environ.get("CIRCUITRY_DEBUG"):
            raise
        return exc.exit_code
    except KeyboardInterrupt:
        out.error("interrupted")
        return 130
    except Exception as exc:  # noqa: BLE001 - last line of defence: no traceback for users
        if os.environ.get("CIRCUITRY_DEBUG"):
            raise
        out.error(f"internal error: {type(exc).__name__}: {exc} (set CIRCUITRY_DEBUG=1 for a traceback)")
        return 3
    finally:
        _warn_plugin_problems(out)


@contextmanager
def _memory_budget(value: str | None) -> Iterator[None]:
    """--memory-budget: the budget every allocation and chunk of the command is checked against (the
    environment variable the budget reads, set for the command and restored after it)."""
    if value is None:
        yield
        return
    from circuitry.budget import ENV, parse_bytes
    from circuitry.errors import UsageError

    try:
        parse_bytes(value)
    except UsageError:
        raise UsageError(f"--memory-budget {value!r}: expected a number of bytes with an optional unit "
                         f"(e.g. 512MB, 8GiB)") from None
    before = os.environ.get(ENV)
    os.environ[ENV] = value
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(ENV, None)
        else:
            os.environ[ENV] = before


def _apply_plugin_options(options: list[str]) -> None:
    from circuitry.errors import UsageError
    from circuitry.plugins import disable

    names = set()
    for opt in options:
        if not opt.startswith("no:") or not opt[3:]:
            raise UsageError(f"-p {opt}: expected -p no:NAME to disable the plugin NAME")
        names.add(opt[3:])
    if names:
        disable(names)


def _warn_plugin_problems(out) -> None:
    """Warn about skipped plugins, clashing names and `-p no:NAME` naming no plugin."""
    from circuitry import plugins
    from circuitry.errors import did_you_mean

    manager = plugins._manager
    if manager is None:
        return
    for info in manager.failed:
        out.info(f"warning: plugin {info.name!r} ({info.module}) was skipped: {info.error}")
    for clash in manager.clashes:
        out.info(f"warning: {clash.message}")
    for name in sorted(plugins._cli_disabled - set(manager.infos)):
        out.info(f"warning: -p no:{name}: no plugin is named {name!r}{did_you_mean(name, manager.infos)}")


def entry() -> None:
    """The console script: `main`, with Ctrl-C at any point (parsing, imports, work) one line and exit 130."""
    try:
        code = main()
    except KeyboardInterrupt:
        sys.stderr.write("error: interrupted\n")
        code = 130
    sys.exit(code)
