"""User-facing errors, torch-free so that any process (export, runtime tools) can raise and print them.

Every CLI wraps its `main` with `run_cli`, so bad input ends with one clear line and a non-zero exit code
instead of a traceback from deep inside a library.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
from typing import Callable


class UserError(Exception):
    """A problem with the user's input or environment; printed as one line, exit code 2."""


def run_cli(main: Callable[[list[str] | None], int | None], argv: list[str] | None = None) -> None:
    try:
        code = main(argv)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(code or 0)


class ArgParser(argparse.ArgumentParser):
    """argparse whose errors are one line (a UserError) instead of the usage block; --help is unchanged."""

    def error(self, message):
        raise UserError(f"{message} (see {self.prog} --help)")


@contextlib.contextmanager
def json_stdout():
    """For `--json` commands: everything printed inside (progress, tables, subprocesses) goes to stderr,
    so stdout carries only the one JSON object printed after the block."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)
