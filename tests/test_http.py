"""The HTTP port: KServe v2 REST (tritonclient.http, JSON and binary) and TensorFlow Serving REST (requests),
against a real server process that also serves gRPC, through the same data plane."""

import gzip
import http.client
import json
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import requests
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
from tritonclient.grpc import service_pb2 as v2

from tests.certs import make_certificates
from tests.helpers.serving import metric, publish_copy, scrape, stub_for, wait_for
from tests.helpers.versions import with_slow_model
from tests.requests import (
    random_images,
    tf_rest_body,
    v2_binary_body,
    v2_http_outputs,
    v2_json_body,
)
from tests.servers import start_server
from tests.tolerance import assert_same_function

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def server(serving_repository):
    """digits/1 (good), digits/2 (tampered: unavailable) and other/1, over gRPC and HTTP."""
    process = start_server(
        serving_repository, "--model-control", "none", "--metrics-port", "0", http=True
    )
    yield process
    assert process.stop() == 0, "\n".join(process.log)


def grpc_outputs(server, images: np.ndarray, model: str = "digits") -> dict[str, np.ndarray]:
    client = triton_grpc.InferenceServerClient(server.url)
    tensor = triton_grpc.InferInput("images", list(images.shape), "FP32")
    tensor.set_data_from_numpy(images)
    result = client.infer(model, [tensor])
    client.close()
    return {name: result.as_numpy(name) for name in ("logits", "probabilities")}


# Each request below runs alone (no concurrent traffic), so gRPC and HTTP answers come from the same model
# call at the same batch size on the same machine: equal bit for bit, as the issue asks.


@pytest.mark.parametrize("batch", [1, 64])
@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_tritonclient_http_answers_equal_the_grpc_answers(server, batch, binary):
    images = random_images(batch)
    client = triton_http.InferenceServerClient(f"127.0.0.1:{server.http_port}")
    try:
        assert (
            client.is_server_live() and client.is_server_ready() and client.is_model_ready("digits")
        )
        tensor = triton_http.InferInput("images", list(images.shape), "FP32")
        tensor.set_data_from_numpy(images, binary_data=binary)
        outputs = [
            triton_http.InferRequestedOutput(name, binary_data=binary)
            for name in ("logits", "probabilities")
        ]
        result = client.infer("digits", [tensor], outputs=outputs, request_id="r-7")
        assert (
            result.get_response()["id"] == "r-7" and result.get_response()["model_version"] == "1"
        )
        for output in result.get_response()["outputs"]:
            assert ("parameters" in output) == binary and ("data" in output) != binary
        expected = grpc_outputs(server, images)
        for name in ("logits", "probabilities"):
            np.testing.assert_array_equal(result.as_numpy(name), expected[name])
        # No outputs named: tritonclient asks for all of them in binary (parameters.binary_data_output).
        default = client.infer("digits", [tensor])
        np.testing.assert_array_equal(default.as_numpy("logits"), expected["logits"])
        # Compressed both ways (Content-Encoding on the request, Accept-Encoding on the answer).
        compressed = client.infer(
            "digits",
            [tensor],
            outputs=outputs,
            request_compression_algorithm="gzip",
            response_compression_algorithm="gzip",
        )
        np.testing.assert_array_equal(
            compressed.as_numpy("probabilities"), expected["probabilities"]
        )
    finally:
        client.close()


@pytest.mark.parametrize("batch", [1, 64])
@pytest.mark.parametrize("columnar", [False, True], ids=["rows", "columns"])
@pytest.mark.parametrize("named", [True, False], ids=["named", "bare"])
def test_tf_serving_rest_answers_equal_the_grpc_answers(server, batch, columnar, named):
    images = random_images(batch)
    response = requests.post(
        f"{server.http_url}/v1/models/digits:predict",
        json=tf_rest_body(images, columnar, named),
        timeout=30,
    )
    assert response.status_code == 200, response.text
    expected = grpc_outputs(server, images)
    document = response.json()
    if columnar:
        assert set(document) == {"outputs"} and set(document["outputs"]) == {
            "logits",
            "probabilities",
        }
        answered = {
            name: np.array(value, np.float32) for name, value in document["outputs"].items()
        }
    else:
        assert set(document) == {"predictions"} and len(document["predictions"]) == batch
        answered = {
            name: np.array([row[name] for row in document["predictions"]], np.float32)
            for name in ("logits", "probabilities")
        }
    for name in ("logits", "probabilities"):
        np.testing.assert_array_equal(answered[name], expected[name])
    versioned = requests.post(
        f"{server.http_url}/v1/models/digits/versions/1:predict",
        json=tf_rest_body(images, columnar, named) | {"signature_name": "serving_default"},
        timeout=30,
    )
    assert versioned.json() == document


def test_metadata_health_config_statistics_and_index(server):
    base = server.http_url
    assert requests.get(f"{base}/v2").json() == {
        "name": "bnserve",
        "version": "0.1.0",
        "extensions": ["classification", "model_configuration", "statistics", "model_repository"],
    }
    assert requests.get(f"{base}/v2/health/live").json() == {"live": True}
    # The server is not ready: digits/2 is tampered, but digits has a ready version, so every model serves.
    assert requests.get(f"{base}/v2/health/ready").status_code == 200
    metadata = requests.get(f"{base}/v2/models/digits").json()
    assert metadata == {
        "name": "digits",
        "versions": ["1"],
        "platform": "onnxruntime_onnx",
        "inputs": [
            {"name": "images", "datatype": "FP32", "shape": [-1, 8, 8, 1]},
            {"name": "image_bytes", "datatype": "BYTES", "shape": [-1]},
        ],
        "outputs": [
            {"name": "logits", "datatype": "FP32", "shape": [-1, 10]},
            {"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]},
        ],
    }
    assert requests.get(f"{base}/v2/models/digits/versions/1").json() == metadata
    assert requests.get(f"{base}/v2/models/digits/versions/1/ready").json() == {
        "name": "digits",
        "ready": True,
    }
    not_ready = requests.get(f"{base}/v2/models/digits/versions/2/ready")
    assert not_ready.status_code == 503 and not_ready.json()["ready"] is False
    config = requests.get(f"{base}/v2/models/digits/config").json()
    assert config["max_batch_size"] == 64 and config["input"][0]["dims"] == [8, 8, 1]
    assert config["parameters"]["parity_status"]["string_value"] == "verified"
    before = requests.get(f"{base}/v2/models/digits/versions/1/stats").json()["model_stats"][0][
        "inference_count"
    ]
    requests.post(f"{base}/v2/models/digits/infer", json=v2_json_body(random_images(3)))
    stats = requests.get(f"{base}/v2/models/digits/stats").json()["model_stats"]
    assert [s["version"] for s in stats] == ["1"] and stats[0]["inference_count"] == before + 3
    assert {s["name"] for s in requests.get(f"{base}/v2/models/stats").json()["model_stats"]} == {
        "digits",
        "other",
    }
    index = requests.post(f"{base}/v2/repository/index", json={}).json()
    assert {(m["name"], m["version"], m["state"]) for m in index} == {
        ("digits", "1", "READY"),
        ("digits", "2", "UNAVAILABLE"),
        ("other", "1", "READY"),
    }
    assert "sha256" in next(m["reason"] for m in index if m["version"] == "2")
    assert len(requests.post(f"{base}/v2/repository/index", json={"ready": True}).json()) == 2
    status = requests.get(f"{base}/v1/models/digits").json()["model_version_status"]
    assert [(s["version"], s["state"], s["status"]["error_code"]) for s in status] == [
        ("1", "AVAILABLE", "OK"),
        ("2", "END", "UNKNOWN"),
    ]
    assert (
        requests.get(f"{base}/v1/models/digits/versions/1").json()["model_version_status"][0][
            "version"
        ]
        == "1"
    )
    signature = requests.get(f"{base}/v1/models/digits/metadata").json()
    assert signature["model_spec"] == {"name": "digits", "signature_name": "", "version": "1"}
    inputs = signature["metadata"]["signature_def"]["signature_def"]["serving_default"]["inputs"]
    assert inputs["images"]["dtype"] == "DT_FLOAT"
    assert [d["size"] for d in inputs["images"]["tensor_shape"]["dim"]] == ["-1", "8", "8", "1"]


def test_http_and_grpc_requests_are_counted_apart(server):
    before = scrape(server)

    def count(text, protocol):
        try:
            return metric(
                text,
                "bnserve_requests_total",
                model="other",
                version="1",
                code="OK",
                protocol=protocol,
            )
        except AssertionError:
            return 0.0

    grpc_outputs(server, random_images(1), "other")
    for _ in range(2):
        requests.post(
            f"{server.http_url}/v2/models/other/infer", json=v2_json_body(random_images(1))
        )
    after = scrape(server)
    assert count(after, "grpc") - count(before, "grpc") == 1
    assert count(after, "http") - count(before, "http") == 2


IMAGE = random_images(1)
GOOD = v2_json_body(IMAGE)


def v2_with(**changes) -> bytes:
    body = json.loads(json.dumps(GOOD))
    body["inputs"][0].update(changes)
    return json.dumps(body).encode()


ERRORS = [  # method, path, body, headers, status, the message (a substring), same as gRPC where gRPC has one
    ("POST", "/v2/models/nope/infer", json.dumps(GOOD).encode(), {}, 404, "model 'nope' not found"),
    (
        "POST",
        "/v2/models/digits/versions/9/infer",
        json.dumps(GOOD).encode(),
        {},
        404,
        "model 'digits' version 9 not found",
    ),
    ("POST", "/v2/models/digits/versions/2/infer", json.dumps(GOOD).encode(), {}, 404, "sha256"),
    (
        "POST",
        "/v2/models/digits/infer",
        v2_with(shape=[1, 8, 8]),
        {},
        400,
        "inputs[0].shape: got [1, 8, 8] (rank 3), expected rank 4 [-1, 8, 8, 1]",
    ),
    (
        "POST",
        "/v2/models/digits/infer",
        v2_with(name="pixels"),
        {},
        400,
        "inputs[0].name: unknown input 'pixels'; expected 'images'",
    ),
    (
        "POST",
        "/v2/models/digits/infer",
        v2_with(datatype="FP64"),
        {},
        400,
        "inputs[0].datatype: got FP64, expected FP32",
    ),
    (
        "POST",
        "/v2/models/digits/infer",
        v2_with(datatype="FLOAT"),
        {},
        400,
        "inputs[0].datatype: unknown datatype 'FLOAT'",
    ),
    (
        "POST",
        "/v2/models/digits/infer",
        v2_with(data=[1.0] * 63),
        {},
        400,
        "inputs[0].data: 63 values, expected 64 for shape [1, 8, 8, 1]",
    ),
    (
        "POST",
        "/v2/models/digits/infer",
        v2_with(data=["a"] * 64),
        {},
        400,
        "inputs[0].data: expected numbers, got strings",
    ),
    (
        "POST",
        "/v2/models/digits/infer",
        v2_with(data=[1.5] * 63 + [True]),
        {},
        400,
        "inputs[0].data: expected numbers for FP32, got true/false among them",
    ),
    (
        "POST",
        "/v2/models/digits/infer",
        v2_with(data=[[1.0] * 8] * 7 + [[1.0] * 7]),
        {},
        400,
        "inputs[0].data: nested lists of unequal length",
    ),
    (
        "POST",
        "/v2/models/digits/infer",
        v2_with(data=[1e39] * 64),
        {},
        400,
        "beyond the FP32 range",
    ),
    (
        "POST",
        "/v2/models/digits/infer",
        b'{"inputs": [',
        {},
        400,
        "body: not valid JSON (Expecting value at line 1 column 13)",
    ),
    ("POST", "/v2/models/digits/infer", b'{"inputs": [NaN]}', {}, 400, "NaN is not a JSON number"),
    ("POST", "/v2/models/digits/infer", b"[" * 100000, {}, 400, "body: JSON nested too deeply"),
    (
        "POST",
        "/v2/models/digits/infer",
        b'{"inputs": {}}',
        {},
        400,
        "inputs: expected a list of input tensors, got an object",
    ),
    ("POST", "/v2/models/digits/infer", b"{}", {}, 400, "inputs: missing"),
    (
        "POST",
        "/v2/models/digits/infer",
        json.dumps(GOOD).encode(),
        {"Content-Type": "text/plain"},
        400,
        "Content-Type: got 'text/plain', expected application/json",
    ),
    (
        "POST",
        "/v2/models/digits/infer",
        v2_binary_body(IMAGE)[0][:-4],
        v2_binary_body(IMAGE)[1],
        400,
        "inputs[0].parameters.binary_data_size: 256 bytes, but the binary section has 252 left",
    ),
    (
        "POST",
        "/v2/models/digits/infer",
        v2_binary_body(IMAGE)[0] + b"xx",
        v2_binary_body(IMAGE)[1],
        400,
        "body: 2 bytes after the JSON header that no input claims",
    ),
    (
        "POST",
        "/v2/models/digits/infer",
        v2_binary_body(IMAGE)[0],
        {"Inference-Header-Content-Length": "99999"},
        400,
        "Inference-Header-Content-Length: 99999, but the body holds",
    ),
    (
        "POST",
        "/v2/models/digits/infer",
        json.dumps(GOOD).encode(),
        {"Content-Encoding": "gzip"},
        400,
        "body: cannot be read",
    ),
    (
        "POST",
        "/v2/models/digits/infer",
        json.dumps(v2_json_body(random_images(65))).encode(),
        {},
        400,
        "inputs[0].shape: batch size 65, expected 1 to max_batch_size 64",
    ),
    (
        "POST",
        "/v2/models/digits/infer",
        json.dumps(v2_json_body(IMAGE, outputs=["scores"])).encode(),
        {},
        400,
        "outputs[0].name: unknown output 'scores'; expected one of logits, probabilities",
    ),
    (
        "GET",
        "/v2/models/digits/infer",
        b"",
        {},
        405,
        "GET is not allowed on /v2/models/digits/infer; expected POST",
    ),
    ("GET", "/v3/anything", b"", {}, 404, "no such endpoint: GET /v3/anything"),
    ("GET", "/v2/models/nope", b"", {}, 404, "model 'nope' not found"),
    (
        "GET",
        "/v2/models/digits/versions/01/config",
        b"",
        {},
        404,
        "versions are canonical positive decimal integers",
    ),
    (
        "POST",
        "/v2/repository/models/other/unload",
        b"",
        {},
        400,
        "explicit model load / unload is not allowed",
    ),
    (
        "POST",
        "/v1/models/digits:predict",
        b'{"instances": [], "inputs": []}',
        {},
        400,
        'body: expected exactly one of "instances" (row format) or "inputs" (columnar format)',
    ),
    ("POST", "/v1/models/digits:predict", b'{"instances": []}', {}, 400, "instances: empty"),
    (
        "POST",
        "/v1/models/digits:predict",
        json.dumps(tf_rest_body(IMAGE) | {"signature_name": "train"}).encode(),
        {},
        400,
        "signature_name: unknown signature 'train'; expected 'serving_default'",
    ),
    (
        "POST",
        "/v1/models/digits:predict",
        json.dumps({"instances": [{"pixels": IMAGE[0].tolist()}]}).encode(),
        {},
        400,
        "instances[0]: named inputs ['pixels']; expected ['images']",
    ),
    (
        "POST",
        "/v1/models/digits:predict",
        json.dumps({"instances": [[[[False]] * 8] + [[[1.0]] * 8] * 7]}).encode(),
        {},
        400,
        "instances: expected numbers for FP32, got true/false among them",
    ),
    (
        "POST",
        "/v1/models/digits:predict",
        json.dumps({"instances": IMAGE[:, :4].tolist()}).encode(),
        {},
        400,
        "inputs[0].shape: got [1, 4, 8, 1], expected [-1, 8, 8, 1]",
    ),
    (
        "POST",
        "/v1/models/digits/labels/stable:predict",
        json.dumps(tf_rest_body(IMAGE)).encode(),
        {},
        400,
        "labels/stable: version labels are not supported",
    ),
    (
        "POST",
        "/v1/models/digits:explain",
        json.dumps(tf_rest_body(IMAGE)).encode(),
        {},
        400,
        ":explain: not served; expected :predict or :classify",
    ),
    (
        "POST",
        "/v1/models/digits:classify",
        json.dumps(tf_rest_body(IMAGE)).encode(),
        {},
        400,
        "examples: expected a list of examples (objects)",
    ),
    (
        "POST",
        "/v1/models/nope:predict",
        json.dumps(tf_rest_body(IMAGE)).encode(),
        {},
        404,
        "model 'nope' not found",
    ),
    ("GET", "/v1/models/digits/versions/7", b"", {}, 404, "model 'digits' version 7 not found"),
]


@pytest.mark.parametrize(
    "method, path, body, headers, status, message",
    ERRORS,
    ids=[f"{e[4]}-{e[5][:40]}" for e in ERRORS],
)
def test_each_error_has_its_status_and_a_precise_json_message(
    server, method, path, body, headers, status, message
):
    response = requests.request(
        method, server.http_url + path, data=body, headers=headers, timeout=30
    )
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"].startswith("application/json")
    assert message in response.json()["error"], response.json()["error"]


def test_the_same_bad_request_gets_the_same_message_on_grpc_and_http(server):
    from tritonclient.utils import InferenceServerException

    images = random_images(1)[:, :, :4]
    client = triton_grpc.InferenceServerClient(server.url)
    tensor = triton_grpc.InferInput("images", list(images.shape), "FP32")
    tensor.set_data_from_numpy(images)
    with pytest.raises(InferenceServerException) as caught:
        client.infer("digits", [tensor])
    client.close()
    response = requests.post(f"{server.http_url}/v2/models/digits/infer", json=v2_json_body(images))
    assert response.status_code == 400 and response.json()["error"] == caught.value.message()


def test_a_body_over_max_message_bytes_gets_413(repository):
    server = start_server(
        repository, "--model-control", "none", "--max-message-bytes", str(1 << 20), http=True
    )
    try:
        big = v2_json_body(random_images(64))
        big["inputs"][0]["data"] = big["inputs"][0]["data"] * 40  # ~2.6 MB of JSON
        response = requests.post(f"{server.http_url}/v2/models/m/infer", json=big, timeout=30)
        assert response.status_code == 413
        assert response.json() == {"error": f"body: more than --max-message-bytes {1 << 20} bytes"}
        # Without a Content-Length (chunked), the cap holds while reading.
        chunks = (json.dumps(big).encode()[i : i + 65536] for i in range(0, 3 << 20, 65536))
        response = requests.post(f"{server.http_url}/v2/models/m/infer", data=chunks, timeout=30)
        assert response.status_code == 413
        # A gzip body that inflates beyond the cap is refused too (the cap counts decoded bytes).
        bomb = gzip.compress(b" " * (4 << 20) + json.dumps(v2_json_body(random_images(1))).encode())
        response = requests.post(
            f"{server.http_url}/v2/models/m/infer",
            data=bomb,
            headers={"Content-Encoding": "gzip"},
            timeout=30,
        )
        assert response.status_code == 413
        good = requests.post(
            f"{server.http_url}/v2/models/m/infer", json=v2_json_body(random_images(1)), timeout=30
        )
        assert good.status_code == 200
    finally:
        assert server.stop() == 0


def fuzz_case(rng: np.random.Generator) -> tuple[str, bytes, dict]:
    """One malformed (or, now and then, accidentally valid) request: path, body, headers."""
    images = random_images(int(rng.integers(1, 4)), seed=int(rng.integers(1 << 30)))
    kind = int(rng.integers(8))
    if kind == 0:  # a valid JSON body with random bytes changed
        body = bytearray(json.dumps(v2_json_body(images)).encode())
        for _ in range(int(rng.integers(1, 6))):
            body[int(rng.integers(len(body)))] = int(rng.integers(256))
        return "/v2/models/digits/infer", bytes(body), {}
    if kind == 1:  # truncated anywhere
        body = json.dumps(v2_json_body(images)).encode()
        return "/v2/models/digits/infer", body[: int(rng.integers(len(body)))], {}
    if kind == 2:  # one node of the JSON tree replaced by a value of another type
        body = v2_json_body(images, outputs=["logits"], binary_outputs=bool(rng.integers(2)))
        replacement = [
            None,
            True,
            -1,
            0,
            2**70,
            1.5,
            "x",
            [],
            {},
            [[1], [2, 3]],
            {"a": 1},
            "1e999",
            -0.0,
        ][int(rng.integers(13))]
        target = [body, body["inputs"][0], body["outputs"][0], body["outputs"][0]["parameters"]][
            int(rng.integers(4))
        ]
        key = (
            list(target)[int(rng.integers(len(target)))] if target and rng.integers(4) else "extra"
        )
        target[key] = replacement
        return "/v2/models/digits/infer", json.dumps(body).encode(), {}
    if kind == 3:  # the binary extension with wrong lengths
        body, headers = v2_binary_body(images)
        choice = int(rng.integers(4))
        if choice == 0:
            headers["Inference-Header-Content-Length"] = str(int(rng.integers(-5, len(body) + 50)))
        elif choice == 1:
            headers["Inference-Header-Content-Length"] = ["", "x", "1.5", "-0", " 7"][
                int(rng.integers(5))
            ]
        elif choice == 2:
            body = body[: int(rng.integers(len(body)))]
        else:
            body += bytes(int(rng.integers(1, 64)))
        return "/v2/models/digits/infer", body, headers
    if kind == 4:  # random bytes, with and without a claimed encoding
        body = rng.bytes(int(rng.integers(0, 512)))
        headers = {"Content-Encoding": "gzip"} if rng.integers(3) == 0 else {}
        return (
            ["/v2/models/digits/infer", "/v1/models/digits:predict"][int(rng.integers(2))],
            body,
            headers,
        )
    if kind == 5:  # TensorFlow Serving bodies with a node replaced
        body = tf_rest_body(images, columnar=bool(rng.integers(2)), named=bool(rng.integers(2)))
        text = json.dumps(body)
        spots = [m.start() for m in re.finditer(r"[\[\]{},:]", text)]
        position = spots[int(rng.integers(len(spots)))]
        text = (
            text[:position]
            + ["", "]", "[", "null", '"s"', "{}"][int(rng.integers(6))]
            + text[position + 1 :]
        )
        return "/v1/models/digits:predict", text.encode(), {}
    if kind == 6:  # deep or wide nesting, odd numbers
        depth = int(rng.integers(1, 5000))
        return "/v2/models/digits/infer", ("[" * depth + "1" + "]" * depth).encode(), {}
    body = v2_json_body(images)  # plausible fields with odd values
    body["inputs"][0]["shape"] = [int(v) for v in rng.integers(-3, 70, int(rng.integers(0, 6)))]
    body["parameters"] = {
        "timeout": int(rng.integers(-10, 10)),
        "binary_data_output": bool(rng.integers(2)),
    }
    return (
        "/v2/models/digits/infer",
        json.dumps(body).encode(),
        {"Content-Type": "application/json"},
    )


def test_fuzzed_http_bodies_never_get_a_500_and_the_server_keeps_answering(server):
    rng = np.random.default_rng(12)
    statuses = {}
    connection = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=30)
    try:
        for case in range(1200):
            path, body, headers = fuzz_case(rng)
            connection.request("POST", path, body=body, headers=headers)
            response = connection.getresponse()
            payload = response.read()
            statuses[response.status] = statuses.get(response.status, 0) + 1
            assert response.status in (200, 400, 404, 413), (
                case,
                response.status,
                payload[:300],
                body[:300],
                headers,
            )
            length = response.getheader(
                "Inference-Header-Content-Length"
            )  # binary outputs follow the JSON
            document = json.loads(payload[: int(length)] if length else payload)
            if response.status != 200:
                assert document["error"], case
            if case % 100 == 99:  # a valid request in between: still answered
                connection.request(
                    "POST", "/v2/models/digits/infer", body=json.dumps(v2_json_body(IMAGE))
                )
                answer = connection.getresponse()
                assert answer.status == 200 and json.loads(answer.read())["outputs"]
    finally:
        connection.close()
    assert statuses.get(400, 0) > 600, statuses
    assert server.process.poll() is None


def readme_curl_lines() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = text.split("<!-- curl-examples -->")[1].split("```")[1]
    return [line for line in block.splitlines() if line.startswith("curl ")]


def test_the_readme_curl_lines_work_against_a_real_server(repository, tmp_path):
    lines = readme_curl_lines()
    assert any(":predict" in line for line in lines) and any(
        "/v2/models/digits/infer" in line for line in lines
    )
    digits = tmp_path / "digits-repo"
    shutil.copytree(repository, digits)
    (digits / "m").rename(digits / "digits")
    manifest = digits / "digits" / "1" / "manifest.json"
    manifest.write_text(json.dumps(json.loads(manifest.read_text()) | {"name": "digits"}))
    server = start_server(digits, "--model-control", "none", http=True)
    try:
        for line in lines:
            command = line.replace("localhost:8501", f"localhost:{server.http_port}")
            result = subprocess.run(
                ["bash", "-c", command + " --fail-with-body --silent --show-error"],
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert result.returncode == 0, (line, result.stdout, result.stderr)
            document = json.loads(result.stdout)
            assert "error" not in document, (line, document)
    finally:
        assert server.stop() == 0


def test_load_and_unload_over_http(repository, source):
    server = start_server(repository, "--model-control", "explicit", http=True)
    base = server.http_url
    try:
        publish_copy(source, repository, "n", 1)
        assert (
            requests.post(f"{base}/v2/models/n/infer", json=v2_json_body(IMAGE)).status_code == 404
        )
        assert requests.post(f"{base}/v2/repository/models/n/load").status_code == 200
        assert (
            requests.post(f"{base}/v2/models/n/infer", json=v2_json_body(IMAGE)).status_code == 200
        )
        assert requests.post(f"{base}/v2/repository/models/n/unload").status_code == 200
        response = requests.post(f"{base}/v2/models/n/infer", json=v2_json_body(IMAGE))
        assert response.status_code == 404 and "not found" in response.json()["error"]
        (repository / "broken" / "1").mkdir(parents=True)
        response = requests.post(f"{base}/v2/repository/models/broken/load")
        assert (
            response.status_code == 400 and "no version could be loaded" in response.json()["error"]
        )
    finally:
        assert server.stop() == 0


@pytest.mark.parametrize("health_open", [True, False])
def test_bearer_token_on_http(repository, tmp_path, health_open):
    token = tmp_path / "token"
    token.write_text("s3cret-token\n")
    server = start_server(
        repository,
        "--model-control",
        "none",
        "--auth-token-file",
        str(token),
        *(["--health-without-auth"] if health_open else []),
        http=True,
    )
    base, good = server.http_url, {"Authorization": "Bearer s3cret-token"}
    try:
        assert (
            requests.post(
                f"{base}/v2/models/m/infer", json=v2_json_body(IMAGE), headers=good
            ).status_code
            == 200
        )
        for headers, message in (
            ({}, "missing 'Authorization' header"),
            ({"Authorization": "Bearer wrong"}, "invalid bearer token"),
            ({"Authorization": "s3cret-token"}, "invalid bearer token"),
        ):
            for method, path in (
                ("POST", "/v2/models/m/infer"),
                ("GET", "/v1/models/m"),
                ("GET", "/v2"),
            ):
                response = requests.request(
                    method, base + path, json=v2_json_body(IMAGE), headers=headers
                )
                assert response.status_code == 401 and message in response.json()["error"]
                assert response.headers["WWW-Authenticate"] == "Bearer"
        for path in ("/v2/health/live", "/v2/health/ready"):
            assert requests.get(base + path).status_code == (200 if health_open else 401)
            assert requests.get(base + path, headers=good).status_code == 200
    finally:
        assert server.stop() == 0


def test_tls_on_http_with_client_certificates(repository, tmp_path):
    certs = make_certificates(tmp_path)
    server = start_server(
        repository,
        "--model-control",
        "none",
        "--tls-cert",
        str(certs.server_cert),
        "--tls-key",
        str(certs.server_key),
        "--tls-client-ca",
        str(certs.ca),
        http=True,
    )
    url = f"https://localhost:{server.http_port}/v2/models/m/infer"
    try:
        response = requests.post(
            url,
            json=v2_json_body(IMAGE),
            verify=str(certs.ca),
            cert=(str(certs.client_cert), str(certs.client_key)),
            timeout=30,
        )
        assert response.status_code == 200 and response.json()["model_version"] == "1"
        # Without a client certificate: under TLS 1.3 the server refuses after the client's side of the handshake
        # is done, so the client sees an SSL alert or, when the close wins the race, a dropped connection.
        with pytest.raises(requests.exceptions.ConnectionError):  # SSLError is a ConnectionError
            requests.post(url, json=v2_json_body(IMAGE), timeout=30, verify=str(certs.ca))
        with pytest.raises(
            requests.exceptions.SSLError
        ):  # the client does not trust the server: its own refusal
            requests.post(
                url,
                json=v2_json_body(IMAGE),
                timeout=30,
                verify=str(certs.other_ca),
                cert=(str(certs.client_cert), str(certs.client_key)),
            )
        with pytest.raises(requests.exceptions.ConnectionError):  # plaintext on the TLS port
            requests.post(url.replace("https", "http"), json=v2_json_body(IMAGE), timeout=30)
    finally:
        assert server.stop() == 0


def test_a_full_queue_gets_503(exported, tmp_path):
    repository = tmp_path / "repo"
    publish_copy(exported[1], repository, "slow", 1, mutate=with_slow_model)
    server = start_server(
        repository,
        "--model-control",
        "none",
        "--max-queue-size",
        "1",
        "--instances",
        "1",
        "--dynamic-batching",
        "off",
        http=True,
    )
    try:
        body = v2_json_body(random_images(8))
        with ThreadPoolExecutor(12) as pool:
            responses = list(
                pool.map(
                    lambda _: requests.post(
                        f"{server.http_url}/v2/models/slow/infer", json=body, timeout=60
                    ),
                    range(12),
                )
            )
        statuses = sorted(r.status_code for r in responses)
        assert statuses[0] == 200 and statuses[-1] == 503, statuses
        refused = next(r for r in responses if r.status_code == 503)
        assert "queue full" in refused.json()["error"]
    finally:
        assert server.stop() == 0


def test_sigterm_drains_http_requests_and_refuses_new_ones(repository):
    server = start_server(
        repository,
        "--model-control",
        "none",
        "--max-queue-delay-us",
        "3000000",
        "--grace-seconds",
        "10",
        http=True,
    )
    url = f"{server.http_url}/v2/models/m/infer"
    body = v2_json_body(random_images(1))
    try:
        with ThreadPoolExecutor(16) as pool:
            for _ in range(3):  # concurrent traffic: batches now wait up to 3 s for companions
                assert all(
                    r.status_code == 200
                    for r in pool.map(lambda _: requests.post(url, json=body), range(16))
                )
            in_flight = [pool.submit(requests.post, url, json=body, timeout=30) for _ in range(16)]
            # All 16 must be inside the server before SIGTERM (a later one is refused, rightly), and the last
            # of them wait for companions up to 3 s: 1 s leaves room on a slow or busy machine.
            time.sleep(1.0)
            server.process.send_signal(signal.SIGTERM)
            time.sleep(0.1)
            try:
                assert (
                    requests.get(f"{server.http_url}/v2/health/ready", timeout=5).status_code == 503
                )
                refused = requests.post(url, json=body, timeout=5)
                assert refused.status_code == 503 and "shutting down" in refused.json()["error"]
            except (
                requests.exceptions.ConnectionError
            ):  # the port may already be closed: also a refusal
                pass
            answers = [future.result() for future in in_flight]
        assert [r.status_code for r in answers] == [200] * 16, [r.text for r in answers]
        assert server.process.wait(timeout=30) == 0
    finally:
        server.stop()


def test_http_port_in_use_is_a_one_line_error(repository):
    blocker = start_server(repository, "--model-control", "none", http=True)
    try:
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "bnserve.cli",
                "serve",
                "--repository",
                str(repository),
                "--grpc-port",
                "0",
                "--http-port",
                str(blocker.http_port),
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 2
        assert (
            result.stderr.strip()
            .splitlines()[-1]
            .startswith(f"error: --http-port {blocker.http_port}: cannot listen")
        )
    finally:
        assert blocker.stop() == 0


def test_http_keeps_answering_while_grpc_is_busy(server):
    """Both protocols share the event loop: a burst on one never starves the other."""
    stop = threading.Event()

    def grpc_load():
        client = triton_grpc.InferenceServerClient(server.url)
        tensor = triton_grpc.InferInput("images", [64, 8, 8, 1], "FP32")
        tensor.set_data_from_numpy(random_images(64))
        while not stop.is_set():
            client.infer("digits", [tensor])
        client.close()

    worker = threading.Thread(target=grpc_load)
    worker.start()
    try:
        for _ in range(20):
            response = requests.post(
                f"{server.http_url}/v2/models/digits/infer", json=v2_json_body(IMAGE), timeout=30
            )
            assert response.status_code == 200
            # Batched with the gRPC burst here: another batch size, so equal to a tolerance (tests/README.md).
            assert_same_function(
                v2_http_outputs(response.content, response.headers)["logits"],
                grpc_outputs(server, IMAGE)["logits"],
            )
    finally:
        stop.set()
        worker.join()


def test_http_connections_are_capped(repository):
    """The HTTP port holds at most --max-connections; more are closed at accept, and served again once others go."""
    import socket

    server = start_server(
        repository, "--model-control", "none", "--max-connections", "4", http=True
    )
    url = f"{server.http_url}/v2/health/live"
    sockets = []
    try:
        for _ in range(4):  # idle keep-alive connections, each holding a slot
            sock = socket.create_connection(("127.0.0.1", server.http_port))
            sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
            assert sock.recv(4096).startswith(b"HTTP/1.1 200")
            sockets.append(sock)
        with pytest.raises(requests.exceptions.ConnectionError):  # the port is full
            requests.get(url, timeout=5)
        sockets.pop().close()

        def served():  # the server sees the close only when its loop gets to it: refused until then
            try:
                return requests.get(url, timeout=5).json() == {"live": True}
            except requests.exceptions.ConnectionError:
                return False

        wait_for(served, what="a freed slot")
        assert any("refusing connections beyond --max-connections 4" in line for line in server.log)
    finally:
        for sock in sockets:
            sock.close()
        assert server.stop() == 0


def test_a_stalled_tls_handshake_on_http_is_closed_after_handshake_seconds(repository, tmp_path):
    import socket

    certs = make_certificates(tmp_path)
    server = start_server(
        repository,
        "--model-control",
        "none",
        "--handshake-seconds",
        "1",
        "--tls-cert",
        str(certs.server_cert),
        "--tls-key",
        str(certs.server_key),
        http=True,
    )
    try:
        sock = socket.create_connection(("127.0.0.1", server.http_port))  # never sends a TLS hello
        sock.settimeout(15)
        started = time.monotonic()
        assert sock.recv(1) == b""  # closed by the server
        assert 0.5 < time.monotonic() - started < 10
        sock.close()
        assert requests.get(
            f"https://localhost:{server.http_port}/v2/health/live", verify=str(certs.ca), timeout=10
        ).json() == {"live": True}
    finally:
        assert server.stop() == 0


@pytest.mark.parametrize("timeout", [10**400, -1, 10**15 + 1])
def test_a_timeout_the_server_cannot_hold_is_a_400_naming_the_field(server, timeout):
    body = json.dumps(v2_json_body(random_images(1)) | {"parameters": {"timeout": timeout}})
    response = requests.post(f"{server.http_url}/v2/models/digits/infer", data=body, timeout=30)
    assert response.status_code == 400, response.text
    shown = "an integer of 401 digits" if timeout == 10**400 else str(timeout)
    assert response.json() == {
        "error": f"parameters.timeout: {shown}, expected microseconds from 0 to 1000000000000000"
    }


def test_requests_aiohttp_cannot_parse_get_json_errors_and_a_bounded_log(repository):
    """200 bad request lines once gave 1,800 traceback lines and plain-text 400s."""
    server = start_server(repository, "--model-control", "none", http=True)
    try:
        bodies = []
        for number in range(200):
            with socket.create_connection(("127.0.0.1", server.http_port), timeout=10) as sock:
                sock.sendall(b"GET /v2 HTTP/1.1\r\nHost: x\r\nBad Header Line\r\n\r\n" if number % 2
                             else b"GARBAGE\x01 / HTTP/1.1\r\n\r\n")  # fmt: skip
                reply = b""
                while chunk := sock.recv(65536):
                    reply += chunk
            head, _, body = reply.partition(b"\r\n\r\n")
            assert head.split(b" ")[1] == b"400" and b"application/json" in head, reply
            bodies.append(json.loads(body))
        assert all(b["error"].startswith("request: cannot be read (") for b in bodies), bodies[:2]
        assert requests.get(f"{server.http_url}/v2/health/live", timeout=10).status_code == 200
    finally:
        assert server.stop() == 0
    noted = [line for line in server.log if "could not be read" in line]
    assert 1 <= len(noted) <= 10, noted
    assert not any("Traceback" in line for line in server.log)


@pytest.mark.parametrize("chunked", [False, True])
def test_a_body_that_never_finishes_gets_408_and_frees_its_connection(repository, chunked):
    """Twenty such clients once held a --max-connections 20 server for as long as they liked."""
    server = start_server(repository, "--model-control", "none", "--body-seconds", "1",
                          "--connection-idle-seconds", "3", http=True)  # fmt: skip
    try:
        framing = b"Transfer-Encoding: chunked\r\n\r\n10\r\n{\"inputs\"" if chunked else (
            b"Content-Length: 1000\r\n\r\n{\"inputs\"")  # fmt: skip
        started = time.monotonic()
        with socket.create_connection(("127.0.0.1", server.http_port), timeout=20) as sock:
            sock.sendall(
                b"POST /v2/models/m/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                + framing
            )
            reply = b""
            while chunk := sock.recv(65536):  # the server closes the connection after its answer
                reply += chunk
        assert time.monotonic() - started < 10
        head, _, body = reply.partition(b"\r\n\r\n")
        assert head.split(b" ")[1] == b"408", reply
        assert json.loads(body) == {"error": "body: not received whole within --body-seconds 1"}
    finally:
        assert server.stop() == 0


@pytest.mark.parametrize("chunked", [False, True])
@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_a_body_that_arrives_in_parts_within_body_seconds_is_read_whole(server, chunked, binary):
    """A body already whole when its handler runs is read without arming --body-seconds; one still arriving
    is read under it. Here the second half follows 0.3 s after the first, so the handler runs before it."""
    images = random_images(2)
    body, headers = (
        v2_binary_body(images) if binary else (json.dumps(v2_json_body(images)).encode(), {})
    )
    head = b"POST /v2/models/digits/infer HTTP/1.1\r\nHost: x\r\nConnection: close\r\n" + b"".join(
        f"{key}: {value}\r\n".encode() for key, value in headers.items()
    )
    half = len(body) // 2
    if chunked:
        head += b"Transfer-Encoding: chunked\r\n\r\n"
        parts = [b"%x\r\n%s\r\n" % (half, body[:half]),
                 b"%x\r\n%s\r\n0\r\n\r\n" % (len(body) - half, body[half:])]  # fmt: skip
    else:
        head += b"Content-Length: %d\r\n\r\n" % len(body)
        parts = [body[:half], body[half:]]
    with socket.create_connection(("127.0.0.1", server.http_port), timeout=20) as sock:
        sock.sendall(head + parts[0])
        time.sleep(0.3)
        sock.sendall(parts[1])
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    response_head, _, response_body = reply.partition(b"\r\n\r\n")
    assert response_head.split(b" ")[1] == b"200", reply[:300]
    if binary:
        length = int(re.search(rb"(?i)inference-header-content-length: (\d+)", response_head)[1])
        header = json.loads(response_body[:length])
        size = header["outputs"][0]["parameters"]["binary_data_size"]
        logits = np.frombuffer(response_body[length : length + size], np.float32).reshape(2, 10)
    else:
        header = json.loads(response_body)
        logits = np.array(header["outputs"][0]["data"], np.float32).reshape(2, 10)
    assert header["outputs"][0]["name"] == "logits"
    assert_same_function(logits, grpc_outputs(server, images)["logits"], err_msg="logits")


def test_a_content_type_with_parameters_is_read_by_its_media_type(server):
    """``application/json; charset=utf-8`` (what many clients send) is JSON; ``text/plain; charset=utf-8``
    is refused with the header as sent."""
    url = f"{server.http_url}/v2/models/digits/infer"
    accepted = requests.post(url, data=json.dumps(GOOD), timeout=30,
                             headers={"Content-Type": "application/json; charset=utf-8"})  # fmt: skip
    assert accepted.status_code == 200, accepted.text
    refused = requests.post(url, data=json.dumps(GOOD), timeout=30,
                            headers={"Content-Type": "text/plain; charset=utf-8"})  # fmt: skip
    assert refused.status_code == 400
    assert refused.json()["error"].startswith(
        "Content-Type: got 'text/plain; charset=utf-8', expected"
    )


def test_json_bodies_have_their_own_smaller_limit_and_binary_keeps_the_larger_one(repository):
    server = start_server(repository, "--model-control", "none", "--max-json-bytes", str(1 << 20),
                          "--max-batch-size", "8192", http=True)  # fmt: skip
    try:
        images = random_images(4096)  # 1 MiB of float32, ~2.5 MiB as JSON
        url = f"{server.http_url}/v2/models/m/infer"
        expected = "bytes of JSON, more than --max-json-bytes 1048576; send tensors in binary"
        sized = requests.post(url, data=json.dumps(v2_json_body(images)), timeout=60)
        assert sized.status_code == 413 and expected in sized.json()["error"], sized.text
        chunked = requests.post(
            url, data=iter([json.dumps(v2_json_body(images)).encode()]), timeout=60
        )
        assert chunked.status_code == 413 and expected in chunked.json()["error"], chunked.text
        body, headers = v2_binary_body(images)
        binary = requests.post(url, data=body, headers=headers, timeout=60)
        assert binary.status_code == 200, binary.text
    finally:
        assert server.stop() == 0


def test_health_answers_within_50_ms_while_a_large_json_body_is_decoded(repository):
    """One 63 MiB JSON body once held every client of the port, gRPC ServerLive included, for 3.9 s."""
    # max_batch_size 65536 lets 4.5M values past the separator bound, so the body is decoded in full.
    server = start_server(repository, "--model-control", "none", "--max-json-bytes", str(64 << 20),
                          "--max-batch-size", "65536", http=True)  # fmt: skip
    channel, stub = stub_for(server.url)
    values = np.random.default_rng(0).uniform(0, 16, 70_000 * 64).round(4)
    body = json.dumps({"inputs": [{"name": "images", "datatype": "FP32", "shape": [70_000, 8, 8, 1],
                                   "data": values.tolist()}]}).encode()  # fmt: skip
    del values
    try:
        stub.ServerLive(v2.ServerLiveRequest(), timeout=10)
        latencies, answer, done = [], {}, threading.Event()

        def post():
            response = requests.post(f"{server.http_url}/v2/models/m/infer", data=body, timeout=120)
            answer.update(status=response.status_code, error=response.json().get("error", ""))
            done.set()

        sender = threading.Thread(target=post)
        sender.start()
        while not done.is_set():
            started = time.perf_counter()
            stub.ServerLive(v2.ServerLiveRequest(), timeout=10)
            latencies.append(time.perf_counter() - started)
            time.sleep(0.01)
        sender.join()
        # The body was decoded (by the decoding process) and then refused for its batch size.
        assert answer["status"] == 400 and "batch size 70000" in answer["error"], answer
        assert len(latencies) >= 20, latencies
        # 95 % of the probes within 50 ms, and none near the defect's 3.9 s: on 2 shared cores a single
        # probe can wait ~0.1 s for the scheduler or the body's own read, which is not the freeze.
        assert np.quantile(latencies, 0.95) < 0.05, sorted(latencies)[-5:]
        assert max(latencies) < 0.5, sorted(latencies)[-5:]
    finally:
        channel.close()
        assert server.stop() == 0


def tree_peak_rss_bytes(pid: int) -> dict[int, int]:
    """VmHWM (peak resident set) of a process and every descendant, by pid, from /proc."""
    peaks, pending = {}, [pid]
    while pending:
        current = pending.pop()
        try:
            status = Path(f"/proc/{current}/status").read_text()
            for task in Path(f"/proc/{current}/task").iterdir():
                pending += [int(c) for c in (task / "children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError):
            continue
        kib = next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM"))
        peaks[current] = int(kib) * 1024
    return peaks


def test_a_json_body_with_more_values_than_a_batch_can_hold_is_refused_before_it_is_decoded(
    repository,
):
    """63 MiB of `1,` (33M values; json.loads would build ~1 GB of floats) for a model whose batches hold
    64 x 64 values: refused with 413 on the count of its separators, no process of the server near 1 GB."""
    server = start_server(repository, "--model-control", "none", "--max-json-bytes", str(64 << 20),
                          http=True)  # fmt: skip
    head = b'{"inputs": [{"name": "images", "datatype": "FP32", "shape": [1, 8, 8, 1], "data": ['
    body = head + b"1," * ((63 << 20) // 2) + b"1]}]}"
    try:
        small = requests.post(f"{server.http_url}/v2/models/m/infer",
                              data=head + b"1," * 63 + b"1]}]}", timeout=30)  # fmt: skip
        assert small.status_code == 200, small.text
        answer = requests.post(f"{server.http_url}/v2/models/m/infer", data=body, timeout=120)
        assert answer.status_code == 413, answer.text
        error = answer.json()["error"]
        assert error.startswith(f"body: {body.count(b',')} JSON separators (','), more than the 12288 "
                                "that a request of the model's max_batch_size inputs can hold"), error  # fmt: skip
        peaks = tree_peak_rss_bytes(server.process.pid)
        assert len(peaks) >= 2, peaks  # the decoding process counted it
        assert max(peaks.values()) < 500 << 20, peaks
        tf_body = b'{"instances": [' + b"1," * ((63 << 20) // 2) + b"1]}"
        tf_answer = requests.post(
            f"{server.http_url}/v1/models/m:predict", data=tf_body, timeout=120
        )
        assert tf_answer.status_code == 413 and "JSON separators" in tf_answer.text, tf_answer.text
        assert max(tree_peak_rss_bytes(server.process.pid).values()) < 500 << 20
    finally:
        assert server.stop() == 0
