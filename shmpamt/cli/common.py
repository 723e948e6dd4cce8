"""What every ``shmpamt`` command shares: its consoles, its one-line errors, its
signal trap, its output-path checks, and the one place errors meet exit codes.

Light on purpose (click, rich and the report only): the commands import it at load
time, so ``shmpamt --help`` stays fast and no command module needs another.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn

import click
from rich.console import Console

from shmpamt.errors import ShmpamtError, UsageError
from shmpamt.records.publish import reason
from shmpamt.report.terminal import EXIT_ERROR, EXIT_MEANING, Report, check_report_path

err_console = Console(stderr=True, soft_wrap=True, emoji=False)  # one line, as written


def _log_width() -> int:
    """Columns for a log file or pipe: $COLUMNS when set, else 120 (not rich's 80), so
    reports stay tables."""
    try:
        return max(20, int(os.environ.get("COLUMNS", "")))
    except ValueError:
        return 120


out_console = Console(width=None if sys.stdout.isatty() else _log_width(), emoji=False)


EPILOG = (
    "Exit status: "
    + "; ".join(f"{code} {meaning}" for code, meaning in EXIT_MEANING.items())
    + '. Shell completion: eval "$(_SHMPAMT_COMPLETE=bash_source shmpamt)" '
    "(zsh_source, fish_source for the other shells)."
)


def fail(msg: str) -> NoReturn:
    err_console.print(f"error: {msg}", highlight=False, markup=False)
    sys.exit(EXIT_ERROR)


def flag_message(e: UsageError) -> str:
    """The library's words with the CLI's spelling of the setting: cpus -> --cpus."""
    msg = str(e)
    if not e.field:
        return msg
    flag = "--" + e.field.replace("_", "-")
    if msg.startswith(e.field):
        return flag + msg[len(e.field) :]
    return f"{flag}: {msg}"


class Interrupt:
    """SIGINT/SIGTERM become a flag the engine polls, so cleanup always runs."""

    def __init__(self) -> None:
        self.signal = ""

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        self.signal = signal.Signals(signum).name

    def __bool__(self) -> bool:
        return bool(self.signal)


#: set from the moment the command line is parsed, so a signal that arrives before a run
#: starts still ends in a partial report (and JSON), not a KeyboardInterrupt traceback
INTERRUPT = Interrupt()


def trap_signals() -> None:
    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, INTERRUPT)


@contextmanager
def trapped_signals() -> Iterator[Interrupt]:
    trap_signals()
    yield INTERRUPT


def check_output_path(option: str, path: Path | None) -> None:
    if path is None:
        return
    if not str(path) or str(path) == ".":
        fail(f"{option}: the file name is empty")
    if len(path.name.encode()) > 255:
        fail(f"{option}: the file name is longer than 255 bytes")
    parent = path.parent if str(path.parent) else Path(".")
    try:
        if not parent.is_dir():
            fail(f"{option} {path}: folder {parent} does not exist")
        if not os.access(parent, os.W_OK):
            fail(f"{option} {path}: folder {parent} is not writable")
        if path.is_dir():
            fail(f"{option} {path} is a folder")
        check_report_path(path)
    except OSError as e:
        fail(f"{option}: {e}")


def finish(report: Report, json_path: Path | None, unwritten: str = "") -> NoReturn:
    """Print the report, write its JSON, exit with its status. A report file that could
    not be written (``unwritten``: the one line an earlier write left, e.g. the HTML
    timeline's) ends the command with that line and exit 2, after what could be shown."""
    error, report.error = report.error, ""
    report.render(out_console)
    report.error = error
    if error:
        err_console.print(f"error: {error}", highlight=False, markup=False)
    failed = [unwritten] if unwritten else []
    if json_path is not None:
        try:
            report.write_json(json_path)
        except OSError as e:
            failed.append(f"cannot write {json_path}: {reason(e)}")
        else:
            out_console.print(f"JSON report written to {json_path}", markup=False)
    for line in failed:
        err_console.print(f"error: {line}", highlight=False, markup=False)
    sys.exit(EXIT_ERROR if failed else report.exit_code())


def guarded(report: Report, fn: Callable[[], None]) -> None:
    """The one place the error tree meets exit codes: usage errors end the command
    (exit 2, one line); run failures become the report's error line (exit 2)."""
    try:
        fn()
    except UsageError as e:
        fail(flag_message(e))
    except ShmpamtError as e:
        report.error = f"{type(e).__name__}: {e}"
    except OSError as e:
        report.error = f"{type(e).__name__}: {e}"
    except Exception as e:
        # A bug in the rig itself: one line by default, the traceback on request.
        if os.environ.get("SHMPAMT_DEBUG"):
            raise
        report.error = f"internal error: {type(e).__name__}: {e} (SHMPAMT_DEBUG=1 shows where)"


def build(make: Callable[[], Any]) -> Any:
    """A config, or one line and exit 2."""
    try:
        return make()
    except UsageError as e:
        fail(flag_message(e))
    except TypeError as e:
        fail(str(e))


class OneLineGroup(click.Group):
    """click's usage errors are four lines; ours are one, on stderr, exit 2."""

    def main(self, *args: Any, **kwargs: Any) -> Any:
        kwargs["standalone_mode"] = False
        try:
            trap_signals()
            return super().main(*args, **kwargs)
        except KeyboardInterrupt:  # a Ctrl-C before our handler was installed
            err_console.print("error: interrupted before the run started", markup=False)
            sys.exit(130)
        except click.exceptions.NoArgsIsHelpError as e:
            click.echo(e.ctx.get_help() if e.ctx else str(e))
            sys.exit(0)
        except click.UsageError as e:
            hint = f" (try '{e.ctx.command_path} --help')" if e.ctx is not None else ""
            fail(e.format_message().replace("\n", " ") + hint)
        except click.ClickException as e:
            fail(e.format_message())
        except click.exceptions.Abort:
            sys.exit(130)
        except click.exceptions.Exit as e:
            sys.exit(e.exit_code)
