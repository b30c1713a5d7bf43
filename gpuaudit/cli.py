"""The command line: a thin typer app. Each command lives in ``gpuaudit/commands/<name>.py``
and exposes ``register(app)``; commands import heavy libraries inside their bodies so that
``gpuaudit --help`` stays fast.

Only ``main`` turns errors into ``error: …`` / ``hint: …`` lines and exit codes.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
import traceback

import typer

from gpuaudit import __version__
from gpuaudit.errors import ExitCode, GpuAuditError

EPILOG = (
    "Exit codes: 0 ok; 1 `check` found a regression; 2 usage or config error; "
    "3 source or data error (NVML unavailable, unreadable or empty data); 4 internal error."
)

app = typer.Typer(
    name="gpuaudit",
    help="Measure GPU waste in LLM inference, price it, and recommend cheaper vLLM configurations.",
    epilog=EPILOG,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    pretty_exceptions_show_locals=False,
    add_completion=False,
    rich_markup_mode=None,
)


def _version(value: bool) -> None:
    if value:
        print(f"gpuaudit {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks for errors."),
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version."
    ),
) -> None:
    """gpuaudit: sample, report, check, recommend."""


def _register_commands() -> None:
    import gpuaudit.commands as pkg

    for mod in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda m: m.name):
        if mod.name.startswith("_"):
            continue
        module = importlib.import_module(f"gpuaudit.commands.{mod.name}")
        module.register(app)


_register_commands()


def err(message: str, hint: str | None = None) -> None:
    """Print a one-line error (and hint) to stderr."""
    print(f"error: {message}", file=sys.stderr)
    if hint:
        print(f"hint: {hint}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    try:
        app(args=args, prog_name="gpuaudit", standalone_mode=True)
    except SystemExit as exc:  # typer/click exit: usage errors are 2, typer.Exit(code) is code
        code = exc.code
        return code if isinstance(code, int) else (0 if code is None else int(ExitCode.USAGE))
    except GpuAuditError as exc:
        if debug:
            traceback.print_exc()
        err(str(exc), exc.hint)
        return int(exc.exit_code)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # a bug: say so, traceback only with --debug
        if debug:
            traceback.print_exc()
        err(f"internal error: {type(exc).__name__}: {exc}", "rerun with --debug and report the traceback")
        return int(ExitCode.INTERNAL)
    return 0
