"""The demo's job graph (scripts/demo.py): dependencies resolve, and ready jobs start critical-path first."""
import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _demo():
    spec = importlib.util.spec_from_file_location("demo", ROOT / "scripts" / "demo.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["demo"] = module                 # dataclasses look their module up while it executes
    spec.loader.exec_module(module)
    return module


def test_plan_dependencies_resolve_and_captions_do_not_wait_for_the_ae(tmp_path):
    demo = _demo()
    jobs = {j.name: j for j in demo.plan(tmp_path / "runs", tmp_path / "engines", "default", tmp_path / "oracle")}
    assert all(d in jobs for j in jobs.values() for d in j.deps)
    assert jobs["text2image-captions"].deps == ()
    assert set(jobs["text2image-cinn"].deps) == {"ae", "text2image-captions"}
    assert "--embed-captions" in jobs["text2image-captions"].argv


def test_ready_jobs_start_critical_path_first(tmp_path):
    demo = _demo()
    jobs = demo.plan(tmp_path / "runs", tmp_path / "engines", "default", tmp_path / "oracle")
    sched = demo.Scheduler(jobs, tmp_path / "state", 2)
    initially_ready = sorted((j.name for j in jobs if not j.deps), key=sched.priority, reverse=True)
    assert initially_ready[0] == "ae"                          # everything on the sprites side waits for it
    assert sched.priority("attributes-cinn") > sched.priority("attributes-mlp") > sched.priority("attributes-check")
    for job in jobs:                                            # a job outranks every job waiting on it by its cost
        for dep in job.deps:
            assert sched.priority(dep) >= sched.priority(job.name) + demo.COSTS.get(dep, demo.DEFAULT_COST)
