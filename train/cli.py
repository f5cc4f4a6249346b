"""What the task CLIs share: `--task` read first, then the task's own option dataclass as --flags.

The CLIs are thin skins: parse, build the task's option dataclass, call the library. No Namespace travels
below this module.
"""
from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from train.tasks.contract import Task
from train.tasks.registry import BUILTIN, load_task


def task_epilog() -> str:
    return (f"tasks: {', '.join(BUILTIN)}, or your own as FILE.py:NAME / package.module:NAME "
            f"(see docs/custom-experts.md). `--task NAME --help` lists that task's options.")


def peek(argv: list[str] | None, *flags: str) -> dict[str, str | None]:
    """The values of `flags` (e.g. --task) before the full parser exists (it depends on them)."""
    ap = argparse.ArgumentParser(add_help=False)
    for flag in flags:
        ap.add_argument(flag)
    known, _ = ap.parse_known_args(argv)
    return vars(known)


def _type_of(f: dataclasses.Field) -> Any:
    if f.metadata.get("type"):
        return f.metadata["type"]
    if isinstance(f.default, bool):
        raise TypeError(f"option {f.name}: booleans need an explicit type")
    return type(f.default) if isinstance(f.default, (int, float)) else str


def add_option_flags(ap: argparse.ArgumentParser, options: type, title: str) -> None:
    """One `--name-with-dashes` per field of the dataclass `options` (help and choices from `option(...)`)."""
    fields = dataclasses.fields(options)
    if not fields:
        return
    group = ap.add_argument_group(title)
    for f in fields:
        default = f.default if f.default is not dataclasses.MISSING else None
        help_text = f.metadata.get("help") or f"default {default}"
        group.add_argument("--" + f.name.replace("_", "-"), dest=f.name, default=default, type=_type_of(f),
                           choices=f.metadata.get("choices"), help=help_text)


def options_from(args: argparse.Namespace, options: type) -> Any:
    return options(**{f.name: getattr(args, f.name) for f in dataclasses.fields(options)})


def resolve_task(spec: str | None) -> Task | None:
    return load_task(spec) if spec else None
