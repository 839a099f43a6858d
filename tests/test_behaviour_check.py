"""benchmarks/behaviour_check.py's comparison: a tensor added on one side is listed apart from a
tensor whose hash differs, and only the latter (or a metric that differs) fails it."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _module():
    spec = importlib.util.spec_from_file_location("behaviour_check", ROOT / "benchmarks/behaviour_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(hashes: dict, loss: float = 1.5) -> dict:
    return {"model": str(sorted(hashes.items())), "tensors": len(hashes), "last_loss": loss, "hashes": hashes}


REF = {"pretrain.moco": _run({"w": "aa", "queue.queue": "bb"}), "detect": {"AP": 1.0, "AP50": 2.0, "AP75": 0.5}}


def test_an_added_buffer_is_listed_apart_and_does_not_fail():
    bc = _module()
    after = {**REF, "pretrain.moco": _run({"w": "aa", "queue.queue": "bb", "queue.born": "cc"})}
    diff, one_sided = bc.compare(REF, after)
    assert diff == []
    assert one_sided == ["pretrain.moco: 1 tensor(s) only in B: queue.born"]


def test_a_changed_tensor_a_changed_loss_and_a_changed_metric_fail():
    bc = _module()
    after = {"pretrain.moco": _run({"w": "ab", "queue.queue": "bb", "queue.born": "cc"}, loss=1.25),
             "detect": {"AP": 1.0, "AP50": 2.5, "AP75": 0.5}}
    diff, one_sided = bc.compare(REF, after)
    assert diff == ["detect: AP50 differ", "pretrain.moco: 1 tensor(s) differ: w", "pretrain.moco: last_loss differ"]
    assert one_sided == ["pretrain.moco: 1 tensor(s) only in B: queue.born"]


def test_a_run_missing_on_one_side_fails_and_old_jsons_compare_the_whole_model():
    bc = _module()
    old = {"pretrain.e2e": {"model": "m1", "tensors": 2, "last_loss": 1.0}}
    assert bc.compare(old, {}) == (["pretrain.e2e: only in A"], [])
    assert bc.compare(old, {"pretrain.e2e": {**old["pretrain.e2e"], "hashes": {"w": "aa"}}}) == ([], [])
    assert bc.compare(old, {"pretrain.e2e": {**old["pretrain.e2e"], "model": "m2"}}) == (
        ["pretrain.e2e: model differ"], [])


def test_the_command_exits_0_on_added_buffers_and_1_on_a_changed_weight(tmp_path):
    a, b, c = tmp_path / "a.json", tmp_path / "b.json", tmp_path / "c.json"
    a.write_text(json.dumps(REF))
    b.write_text(json.dumps({**REF, "pretrain.moco": _run({"w": "aa", "queue.queue": "bb", "queue.born": "cc"})}))
    c.write_text(json.dumps({**REF, "pretrain.moco": _run({"w": "zz", "queue.queue": "bb"})}))
    cmd = [sys.executable, str(ROOT / "benchmarks/behaviour_check.py"), "--compare", str(a)]
    same = subprocess.run([*cmd, str(b)], capture_output=True, text=True)
    assert same.returncode == 0, same.stdout + same.stderr
    assert "only in B: queue.born" in same.stdout and "0 difference(s)" in same.stdout
    changed = subprocess.run([*cmd, str(c)], capture_output=True, text=True)
    assert changed.returncode == 1
    assert "1 tensor(s) differ: w" in changed.stdout
