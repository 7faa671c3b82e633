"""Distributed training: mirrored on logical CPUs equals one device; two real worker processes."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
SMALL = ["--widths", "8,16", "--strides", "1,2"]


def check(kind: str) -> dict:
    result = subprocess.run([sys.executable, str(ROOT / "tests" / "distributed_check.py"), kind],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_mirrored_on_two_cpu_replicas_equals_one_device():
    result = check("equivalence")
    assert result["replicas"] == 2
    assert max(result["max_difference"].values()) <= 1e-5, result["max_difference"]
    assert min(result["shadow_movement"].values()) > 1e-2  # the shadows did move away from 0 / 1
    np.testing.assert_allclose(*result["losses"], rtol=1e-5)


def test_replicas_with_different_local_batches_get_the_global_moments():
    result = check("moments")
    for means, variances in zip(result["replica_means"], result["replica_variances"]):
        np.testing.assert_allclose(means, result["numpy_mean"], rtol=1e-5)
        np.testing.assert_allclose(variances, result["numpy_variance"], rtol=1e-5)


def free_ports(count):
    # TF_CONFIG needs the addresses before the workers start; the small race of closing and reusing a
    # port is accepted here (TensorFlow binds them itself).
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def start_workers(run_dir, epochs, timeout_s="20"):
    ports = free_ports(2)
    workers = []
    for index in range(2):
        tf_config = {"cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]}, "task": {"type": "worker", "index": index}}
        command = [sys.executable, "-m", "bnserve.cli", "train", "--out", str(run_dir), "--strategy", "multiworker",
                   "--epochs", str(epochs), "--collective-timeout-seconds", timeout_s, *SMALL]
        workers.append(subprocess.Popen(command, env=os.environ | {"TF_CONFIG": json.dumps(tf_config)},
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    return workers


@pytest.mark.timeout(600)
def test_two_worker_processes_train_like_one_process(tmp_path):
    from exporter.export import ExportRequest, export

    workers = start_workers(tmp_path / "multi", epochs=2)
    outputs = [w.communicate(timeout=300) for w in workers]
    assert [w.returncode for w in workers] == [0, 0], [o[1][-2000:] for o in outputs]
    single = subprocess.run([sys.executable, "-m", "bnserve.cli", "train", "--out", str(tmp_path / "single"),
                             "--epochs", "2", *SMALL], capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr[-2000:]
    record = json.loads((tmp_path / "multi" / "run.json").read_text())
    assert record["distribution"]["replicas"] == 2 and record["status"] == "completed"
    logits = {}
    for name in ("multi", "single"):
        _, path, _ = export(ExportRequest(tmp_path / name, tmp_path / "repo", name), log=lambda line: None)
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path / "model.onnx"), providers=["CPUExecutionProvider"])
        images = np.random.default_rng(0).uniform(0, 16, (64, 8, 8, 1)).astype(np.float32)
        logits[name] = session.run(["logits"], {"images": images})[0]
    np.testing.assert_allclose(logits["multi"], logits["single"], rtol=0, atol=1e-4)
    assert sorted(p.name for p in (tmp_path / "multi").iterdir()) == ["checkpoints", "logs", "run.json"]


@pytest.mark.timeout(600)
def test_a_dead_worker_makes_the_chief_fail_with_a_clear_error(tmp_path):
    chief, worker = start_workers(tmp_path / "run", epochs=1000, timeout_s="10")
    deadline = time.monotonic() + 240
    while not (tmp_path / "run" / "checkpoints" / "checkpoint").exists():  # an epoch is done: training runs
        assert time.monotonic() < deadline and chief.poll() is None, chief.stderr.read()[-2000:]
        time.sleep(0.2)
    worker.send_signal(signal.SIGKILL)
    killed = time.monotonic()
    _, stderr = chief.communicate(timeout=180)
    worker.wait(timeout=30)
    assert chief.returncode == 1, stderr[-3000:]
    assert time.monotonic() - killed < 120
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("error: worker 0 of 2: training stopped in epoch") and "stopped answering" in last, last


def test_a_run_resumes_under_another_strategy(tmp_path):
    """One epoch on one device, the second on 2 logical CPUs = two epochs on one device."""
    from tests.test_training_run import checkpoint_values

    def train(run_dir, *flags):
        result = subprocess.run([sys.executable, "-m", "bnserve.cli", "train", "--out", str(run_dir), *flags],
                                capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-2000:]

    train(tmp_path / "straight", "--epochs", "2", *SMALL)
    train(tmp_path / "switched", "--epochs", "1", *SMALL)
    train(tmp_path / "switched", "--resume", "--epochs", "2", "--strategy", "mirrored", "--cpu-replicas", "2")
    record = json.loads((tmp_path / "switched" / "run.json").read_text())
    assert record["distribution"]["replicas"] == 2 and [e["epoch"] for e in record["epochs"]] == [1, 2]
    straight, switched = checkpoint_values(tmp_path / "straight"), checkpoint_values(tmp_path / "switched")
    assert straight.keys() == switched.keys()
    for key, value in straight.items():
        np.testing.assert_allclose(switched[key], value, rtol=0, atol=1e-5, err_msg=key)
