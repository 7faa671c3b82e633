"""`pip install bnserve` is the serving core: it serves, predicts and verifies without TensorFlow, and a command
that needs an extra says which."""

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import requests

from tests.requests import v2_json_body
from tests.servers import free_port, start_listening
from tests.test_cli_train import assert_user_error
from tests.test_operations import infer_request, publish_copy, stub_for

ROOT = Path(__file__).resolve().parent.parent


def site_packages_mb(venv: Path) -> float:
    total = sum(p.stat().st_size for p in venv.glob("lib/python3*/site-packages/**/*") if p.is_file())
    return total / 2**20


@pytest.mark.timeout(900)
def test_the_core_install_serves_predicts_and_verifies_without_tensorflow(exported, tmp_path):
    _, version_dir, _ = exported
    # Built from a copy: pip builds in the source tree, and a build/ left in the checkout could outlive the code.
    source = tmp_path / "source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".venv", ".git", ".bench", "build", "runs", "models",
                                                                "__pycache__", "*.egg-info"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(tmp_path / "dist"),
                    str(source)], check=True, capture_output=True, timeout=600)
    wheel = next((tmp_path / "dist").glob("bnserve-*.whl"))
    venv = tmp_path / "core"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", str(wheel)], check=True,
                   capture_output=True, timeout=600)
    python, bnserve = str(venv / "bin" / "python"), str(venv / "bin" / "bnserve")
    missing = subprocess.run([python, "-c", "import tensorflow"], capture_output=True, text=True)
    assert missing.returncode == 1 and "No module named 'tensorflow'" in missing.stderr
    core_mb = site_packages_mb(venv)
    full_mb = site_packages_mb(Path(sys.prefix))
    print(f"core install: {core_mb:.0f} MB of site-packages; the development install: {full_mb:.0f} MB")
    assert core_mb < full_mb / 3, (core_mb, full_mb)

    repository = tmp_path / "repo"
    publish_copy(version_dir, repository, "digits", 1)
    http_port = free_port()
    server = start_listening([bnserve, "serve", "--repository", str(repository), "--grpc-port", "0",
                              "--http-port", str(http_port), "--model-control", "none"])
    channel, stub = stub_for(server.url)
    try:
        request = infer_request(batch=3, model="digits")
        response = stub.ModelInfer(request)
        logits = np.frombuffer(response.raw_output_contents[0], np.float32).reshape(3, 10)
        images = np.frombuffer(request.raw_input_contents[0], np.float32).reshape(3, 8, 8, 1)
        session = onnxruntime.InferenceSession(str(version_dir / "model.onnx"), providers=["CPUExecutionProvider"])
        np.testing.assert_allclose(logits, session.run(["logits"], {"images": images})[0], rtol=1e-5, atol=1e-5)
        np.save(tmp_path / "three.npy", images)
        predicted = subprocess.run([bnserve, "predict", "--url", server.url, "--model", "digits",
                                    str(tmp_path / "three.npy")], capture_output=True, text=True, timeout=60)
        assert predicted.returncode == 0 and predicted.stdout.strip(), predicted.stderr
        answer = requests.post(f"http://127.0.0.1:{http_port}/v2/models/digits/infer",
                               json=v2_json_body(images), timeout=30)  # the HTTP port is part of the core too
        assert answer.status_code == 200 and answer.json()["model_version"] == "1"
    finally:
        channel.close()
        assert server.stop() == 0
    assert "libtensorflow" not in "".join(server.log)
    verified = subprocess.run([bnserve, "verify", str(repository / "digits" / "1")], capture_output=True, text=True,
                              timeout=120)
    assert verified.returncode == 0 and verified.stdout.splitlines()[-1].startswith("verified: onnxruntime"), verified
    for command, extra in ((["train", "--out", str(tmp_path / "run")], "train"),
                           (["export", str(tmp_path / "run"), "--repository", str(repository), "--name", "x"], "train"),
                           (["serve", "--repository", str(repository), "--backend", "tf"], "tf"),
                           (["verify", str(repository / "digits" / "1"), "--runtime", "tf"], "tf")):
        result = subprocess.run([bnserve, *command], capture_output=True, text=True, timeout=120)
        assert_user_error(result, f"needs the '{extra}' extra", f"pip install 'bnserve[{extra}]'")
    shutil.rmtree(venv)
