"""Contracts of the CLIs beyond their error lines (issue 17): every `--json` command prints exactly one
JSON object on stdout, training leaves no stale temp files and writes checkpoints with the usual
permissions, the experiments summary survives a bad evaluation file, bundles carry no machine path.
Subprocesses run under the same time and memory limits as tests/test_adversarial.py."""
import json
import os
import subprocess

import pytest
from test_adversarial import TRAIN_MEMORY, _train_argv, run_limited
from test_export import ROOT

from runtime import PipelineError
from train import cinn


def test_stale_temp_files_cleaned_and_checkpoint_mode_follows_umask(features_files, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / ".checkpoint.safetensors.k9x2.tmp").write_bytes(b"")          # what a kill -9 mid-save leaves
    cinn.main(_train_argv(features_files, out, ["--steps", "2"]))
    assert not list(out.glob(".*.tmp"))
    umask = os.umask(0)
    os.umask(umask)
    for name in ("checkpoint.safetensors", "config.json"):
        assert (out / name).stat().st_mode & 0o777 == 0o666 & ~umask, name


# ---- --json: exactly one JSON object on stdout ------------------------------------------------------------

def _one_json_object(stdout: bytes) -> dict:
    text = stdout.decode()
    obj, end = json.JSONDecoder().raw_decode(text.lstrip())
    assert isinstance(obj, dict) and not text.lstrip()[end:].strip(), text[:2000]
    return obj


# every command with --json, and where it is tested (a new --json option must be added here)
JSON_COMMANDS = {"runtime/__main__.py": "check, info: below", "train/evaluate.py": "below",
                 "train/caption_words.py": "test_tasks_sprites (one JSON list of rows, as documented)",
                 "train/synthetic.py": "below (one JSON list of rows, as documented)",
                 "bench/serving.py": "--json FILE writes a file (stdout is the table): nothing to parse"}


def test_every_json_command_is_listed():
    found = {str(p.relative_to(ROOT)) for folder in ("runtime", "train", "export", "bench", "scripts")
             for p in (ROOT / folder).rglob("*.py") if 'add_argument("--json"' in p.read_text()}
    assert found <= set(JSON_COMMANDS), f"--json commands without a stdout test: {found - set(JSON_COMMANDS)}"


def test_runtime_and_evaluate_json_print_one_object(bundles):
    b = str(bundles.get("text2image"))            # check warns (truncated validation text): on stderr
    report = _one_json_object(run_limited(["-m", "runtime", "check", b, "--json", "--repeats", "1"]).stdout)
    assert report["ok"] and report["tokenizer_match"]
    assert _one_json_object(run_limited(["-m", "runtime", "info", b, "--json"]).stdout)["task"] == "text2image"
    run = bundles.features_run()
    p = run_limited(["-m", "train.evaluate", "--run", str(run), "--source", str(bundles.root / "c.npy"), "--target",
                     str(bundles.root / "z.npy"), "--json"], memory=TRAIN_MEMORY, timeout=180)
    assert p.returncode == 0 and _one_json_object(p.stdout)["num_samples"] == 2000


def test_synthetic_json_keeps_stdout_for_the_rows(tmp_path):
    """Its progress lines ("wrote ...") go to stderr with --json: stdout is one JSON list."""
    p = run_limited(["-m", "train.synthetic", "--generator", "base,other", "--out", str(tmp_path), "--n", "200",
                     "--n-test", "50", "--json"], memory=TRAIN_MEMORY, timeout=180)
    assert p.returncode == 0, p.stderr.decode()[-2000:]
    rows = json.loads(p.stdout.decode())
    assert [r["generator"] for r in rows] == ["base", "other"] and b"wrote" in p.stderr


def _noisy_evaluation(args) -> dict:
    """Stands in for an evaluation that first trains something (unpaired: the domain classifier)."""
    print("step  loss\n   1  0.693")
    subprocess.run(["echo", "a child process writing to fd 1"], check=True)
    return {"score": 1.0}


def test_evaluate_json_keeps_stdout_for_the_object(monkeypatch, tmp_path, capfd):
    from train import evaluate
    monkeypatch.setitem(evaluate.EVALUATORS, "noisy", "test_cli_contracts:_noisy_evaluation")
    evaluate.main(["--task", "noisy", "--run", str(tmp_path), "--json"])
    out, err = capfd.readouterr()
    assert _one_json_object(out.encode()) == {"score": 1.0}
    assert "0.693" in err and "child process" in err
    evaluate.main(["--task", "noisy", "--run", str(tmp_path)])           # without --json: all on stdout
    assert "0.693" in capfd.readouterr().out


def test_experiments_summary_survives_a_bad_eval_json(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "scripts"))
    import experiments
    (tmp_path / "unpaired" / "cinn").mkdir(parents=True)
    (tmp_path / "unpaired" / "cinn" / "eval.json").write_text("step loss\n1 0.69\n{\"content_kept\": 0.9}")
    (tmp_path / "shape" / "cinn").mkdir(parents=True)
    (tmp_path / "shape" / "cinn" / "eval.json").write_text(json.dumps({"diversity": 0.5, "appearance_kept": 0.8}))
    rows = experiments.summary_table(tmp_path, tmp_path / ".demo", ["unpaired", "shape", "diagnosis"])
    assert "unpaired" in rows[2] and "unreadable (JSONDecodeError" in rows[2]
    assert "appearance_kept 0.800" in rows[3] and "diversity 0.500" in rows[3] and "| ? |" in rows[3]
    assert "summary.json unreadable" in rows[4]


def test_bundles_record_the_run_by_name_not_by_path(bundles):
    from runtime.manifest import read_manifest, validate_manifest
    m = read_manifest(bundles.get("features"))
    assert m["source"]["run"] == "bundles/features-run" and len(m["source"]["checkpoint_sha256"]) == 64
    m["source"]["run"] = str(bundles.features_run())              # what export used to write
    validate_manifest(m)                                          # older bundles still load
    with pytest.raises(PipelineError, match="'source.run' holds a machine path"):
        validate_manifest(m, writing=True)                        # export refuses to write it
