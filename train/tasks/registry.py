"""Finding a task by name: a built-in one, or one defined in the user's own code.

  attributes                    a built-in task (BUILTIN below)
  my_tasks.py:TASK              the Task object TASK in the file my_tasks.py (a path, relative to the cwd)
  package.module:TASK           the Task object TASK in an importable module

Task modules are imported by name here (importlib), only when a task of theirs is asked for, so a command
pays for the experts it uses (BigGAN's package, for one, is slow to import).
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from pathlib import Path

from train.core.common import UserError
from train.tasks.contract import Task

BUILTIN = {"features": "train.tasks.features", "attributes": "train.tasks.sprites", "text2image": "train.tasks.sprites",
           "exemplar": "train.tasks.spatial", "shape": "train.tasks.spatial", "superres": "train.tasks.domains",
           "unpaired": "train.tasks.domains", "diagnosis": "train.tasks.diagnosis",
           "bert2biggan": "train.tasks.bert2biggan"}


def _module_from_file(path: Path):
    name = f"user_tasks_{path.stem}_{hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:8]}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module          # before exec: dataclasses in the file look their module up
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def load_task(spec: str) -> Task:
    """The Task named by `spec` (see the module docstring); a clear UserError for anything else."""
    if ":" not in spec:
        if spec not in BUILTIN:
            raise UserError(f"unknown task '{spec}'; choose from {', '.join(BUILTIN)}, or name your own as "
                            f"FILE.py:NAME or package.module:NAME")
        return importlib.import_module(BUILTIN[spec]).TASKS[spec]
    where, attr = spec.rsplit(":", 1)
    if where.endswith(".py"):
        path = Path(where)
        if not path.is_file():
            raise UserError(f"--task {spec}: no such file {path}")
        module = _module_from_file(path)
    else:
        try:
            module = importlib.import_module(where)
        except ModuleNotFoundError as e:
            raise UserError(f"--task {spec}: cannot import {where} ({e}); is it on PYTHONPATH?") from None
    task = getattr(module, attr, None)
    if not isinstance(task, Task):
        found = "nothing" if task is None else type(task).__name__
        raise UserError(f"--task {spec}: {where} defines {found} named {attr}, not a train.tasks.contract.Task")
    return task


def task_of_run(config: dict, spec: str | None = None) -> Task:
    """The task a run was trained with: `spec` if given, else what its config.json recorded."""
    return load_task(spec or config.get("task_ref") or config.get("task") or "features")


def all_tasks() -> dict[str, Task]:
    """Every built-in task by name (imports every task module)."""
    return {name: load_task(name) for name in BUILTIN}
