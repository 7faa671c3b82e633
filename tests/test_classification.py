"""Triton's classification extension on gRPC and HTTP, with tritonclient as Triton's users call it."""

import json

import numpy as np
import pytest
import requests
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from bnserve.core.repository import read_manifest
from tests.helpers.serving import publish_copy
from tests.requests import random_images
from tests.servers import start_server


@pytest.fixture(scope="module")
def server(exported, tmp_path_factory):
    # A repository of its own: other modules publish more versions into the session's one.
    _, version_dir, _ = exported
    repository = tmp_path_factory.mktemp("classification")
    publish_copy(version_dir, repository, "digits", 1)
    server = start_server(repository, http=True)
    yield server
    assert server.stop() == 0


def expected_top(probabilities: np.ndarray, count: int, labels) -> list[list[bytes]]:
    """Independently of the server: sort each row (largest first) and print as Triton's std::to_string."""
    rows = []
    for row in probabilities:
        order = sorted(range(len(row)), key=lambda i: (-row[i], i))[:count]
        rows.append([("%f:%d:%s" % (row[i], i, labels[i])).encode() for i in order])
    return rows


def test_grpc_and_http_return_the_top_classes_with_labels(server, exported):
    _, version_dir, _ = exported
    labels = read_manifest(version_dir).class_labels
    images = random_images(5, seed=3)
    grpc_client = grpcclient.InferenceServerClient(server.url)
    http_client = httpclient.InferenceServerClient(server.http_url.removeprefix("http://"))
    try:
        grpc_input = grpcclient.InferInput("images", list(images.shape), "FP32")
        grpc_input.set_data_from_numpy(images)
        plain = grpc_client.infer("digits", [grpc_input]).as_numpy("probabilities")
        result = grpc_client.infer(
            "digits",
            [grpc_input],
            outputs=[
                grpcclient.InferRequestedOutput("probabilities", class_count=3),
                grpcclient.InferRequestedOutput("logits"),
            ],
        )
        top = result.as_numpy("probabilities")
        assert top.shape == (5, 3) and result.get_output("probabilities").datatype == "BYTES"
        assert top.tolist() == expected_top(plain, 3, labels)
        assert result.as_numpy("logits").shape == (5, 10)  # the other output unchanged
        # More classes than the model has: min(N, K).
        result = grpc_client.infer(
            "digits",
            [grpc_input],
            outputs=[grpcclient.InferRequestedOutput("logits", class_count=50)],
        )
        assert result.as_numpy("logits").shape == (5, 10)
        for binary in (True, False):  # tritonclient.http asks for binary by default
            http_input = httpclient.InferInput("images", list(images.shape), "FP32")
            http_input.set_data_from_numpy(images, binary_data=binary)
            result = http_client.infer(
                "digits",
                [http_input],
                outputs=[
                    httpclient.InferRequestedOutput(
                        "probabilities", binary_data=binary, class_count=2
                    )
                ],
            )
            top = result.as_numpy("probabilities")
            assert top.shape == (5, 2)
            # Binary BYTES come back as bytes, JSON strings as str: compare as bytes.
            as_bytes = [[v if isinstance(v, bytes) else v.encode() for v in row] for row in top]
            assert as_bytes == expected_top(plain, 2, labels), binary
        assert "classification" in grpc_client.get_server_metadata().extensions
        assert "classification" in http_client.get_server_metadata()["extensions"]
    finally:
        grpc_client.close()
        http_client.close()


def test_curl_style_json_gives_strings(server):
    images = random_images(1, seed=4)
    body = {
        "inputs": [
            {"name": "images", "datatype": "FP32", "shape": [1, 8, 8, 1],
             "data": images.reshape(-1).tolist()}
        ],
        "outputs": [{"name": "probabilities", "parameters": {"classification": 1}}],
    }  # fmt: skip
    response = requests.post(f"{server.http_url}/v2/models/digits/infer", json=body, timeout=30)
    assert response.status_code == 200, response.text
    output = response.json()["outputs"][0]
    assert output["datatype"] == "BYTES" and output["shape"] == [1, 1]
    value, index, label = output["data"][0].split(":")
    assert 0.0 < float(value) <= 1.0 and len(value.split(".")[1]) == 6 and index == label


@pytest.mark.parametrize(
    "parameters, message",
    [
        ({"classification": 0}, "outputs[0].parameters.classification: 0; expected a class count >= 1"),
        ({"classification": -2}, "outputs[0].parameters.classification: -2; expected a class count >= 1"),
        ({"classification": "3"}, 'outputs[0].parameters.classification: "3"; expected an integer class count'),
        ({"classification": True}, "outputs[0].parameters.classification: true; expected an integer class count"),
        (
            {"classification": 2, "shared_memory_region": "r"},
            "outputs[0].parameters.classification: cannot be combined with shared_memory_region",
        ),
    ],
)  # fmt: skip
def test_http_refusals_name_the_reason(server, parameters, message):
    body = {
        "inputs": [
            {"name": "images", "datatype": "FP32", "shape": [1, 8, 8, 1], "data": [0.0] * 64}
        ],
        "outputs": [{"name": "probabilities", "parameters": parameters}],
    }
    response = requests.post(
        f"{server.http_url}/v2/models/digits/infer", data=json.dumps(body), timeout=30
    )
    assert response.status_code == 400 and message in response.json()["error"], response.text


def test_grpc_refusals_name_the_reason(server):
    client = grpcclient.InferenceServerClient(server.url)
    try:
        images = random_images(1)
        tensor = grpcclient.InferInput("images", [1, 8, 8, 1], "FP32")
        tensor.set_data_from_numpy(images)
        with pytest.raises(InferenceServerException) as refused:
            client.infer(
                "digits",
                [tensor],
                outputs=[grpcclient.InferRequestedOutput("logits", class_count=-1)],
            )
        assert "INVALID_ARGUMENT" in str(refused.value.status())
        assert "outputs[0].parameters.classification: -1; expected a class count >= 1" in (
            refused.value.message()
        )
    finally:
        client.close()
