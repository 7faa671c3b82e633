"""TensorFlow Serving's Classify with its own clients: the tensorflow-serving-api stub and curl :classify."""

import json
import subprocess

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)

from bnserve.core.repository import read_manifest
from tests.helpers.serving import publish_copy
from tests.requests import random_images
from tests.servers import start_server


@pytest.fixture(scope="module")
def server(exported, tmp_path_factory):
    # A repository of its own: other modules publish more versions into the session's one.
    _, version_dir, _ = exported
    repository = tmp_path_factory.mktemp("classify")
    publish_copy(version_dir, repository, "digits", 1)
    server = start_server(repository, http=True)
    yield server
    assert server.stop() == 0


def example(image: np.ndarray) -> tf.train.Example:
    """One image as the README says it travels: feature "images", a float list of raw values (NHWC)."""
    feature = tf.train.Feature(float_list=tf.train.FloatList(value=image.reshape(-1).tolist()))
    return tf.train.Example(features=tf.train.Features(feature={"images": feature}))


def expected_classes(server, images, labels):
    """Probabilities from Predict's v2 sibling (tritonclient), ranked here: every class, highest first."""
    import tritonclient.grpc as triton

    client = triton.InferenceServerClient(server.url)
    tensor = triton.InferInput("images", list(images.shape), "FP32")
    tensor.set_data_from_numpy(images)
    probabilities = client.infer("digits", [tensor]).as_numpy("probabilities")
    client.close()
    return [
        [(labels[k], float(row[k])) for k in sorted(range(len(row)), key=lambda i: (-row[i], i))]
        for row in probabilities
    ]


def test_grpc_classify_returns_labels_and_scores(server, exported):
    _, version_dir, _ = exported
    labels = read_manifest(version_dir).class_labels
    images = random_images(3, seed=7)
    with grpc.insecure_channel(server.url) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        request = classification_pb2.ClassificationRequest()
        request.model_spec.name = "digits"
        request.input.example_list.examples.extend(example(image) for image in images)
        response = stub.Classify(request, timeout=30)
        got = [
            [(c.label, c.score) for c in item.classes] for item in response.result.classifications
        ]
        expected = expected_classes(server, images, labels)
        assert [[label for label, _ in row] for row in got] == [
            [label for label, _ in row] for row in expected
        ]
        np.testing.assert_allclose(
            [[s for _, s in row] for row in got], [[s for _, s in row] for row in expected]
        )
        assert response.model_spec.name == "digits" and response.model_spec.version.value == 1
        # The same with a context (features shared by every example) and the classify signature.
        request = classification_pb2.ClassificationRequest()
        request.model_spec.name = "digits"
        request.model_spec.signature_name = "classify"
        context = request.input.example_list_with_context
        context.context.CopyFrom(example(images[0]))
        context.examples.add()
        response = stub.Classify(request, timeout=30)
        assert [c.label for c in response.result.classifications[0].classes] == [
            label for label, _ in expected[0]
        ]
        metadata = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
        metadata.model_spec.name = "digits"
        signatures = get_model_metadata_pb2.SignatureDefMap()
        stub.GetModelMetadata(metadata, timeout=30).metadata["signature_def"].Unpack(signatures)
        assert signatures.signature_def["classify"].method_name == "tensorflow/serving/classify"
        regress = regression_pb2.RegressionRequest()
        regress.model_spec.name = "digits"
        with pytest.raises(grpc.RpcError) as refused:
            stub.Regress(regress, timeout=30)
        assert refused.value.code() == grpc.StatusCode.UNIMPLEMENTED
        assert "bnserve serves classifiers" in refused.value.details()


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda r: None, "input: empty; expected example_list or example_list_with_context"),
        (
            lambda r: r.input.example_list.examples.add(),
            "input.example_list.examples[0]: no feature 'images' or 'image_bytes' (found none); expected "
            "a float_list of 64 raw values (8x8x1, channels last) in 'images', or one PNG or JPEG in a "
            "bytes_list 'image_bytes'",
        ),
        (
            lambda r: r.input.example_list.examples.add().features.feature["images"].float_list.value.extend([1.0] * 3),
            "input.example_list.examples[0].images: 3 values, expected 64 (8x8x1, channels last)",
        ),
        (
            lambda r: r.input.example_list.examples.add().features.feature["images"].bytes_list.value.append(b"\x89PNG"),
            "input.example_list.examples[0].images: a bytes_list; send encoded images in the feature "
            "'image_bytes', or a float_list of 64 raw values here",
        ),
    ],
)  # fmt: skip
def test_grpc_classify_refusals_name_the_field(server, make, message):
    with grpc.insecure_channel(server.url) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        request = classification_pb2.ClassificationRequest()
        request.model_spec.name = "digits"
        make(request)
        with pytest.raises(grpc.RpcError) as refused:
            stub.Classify(request, timeout=30)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert message in refused.value.details()


def curl(url, body=None):
    command = ["curl", "-sS", "-w", "\n%{http_code}", url]
    if body is not None:
        command += ["-d", json.dumps(body)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=30, check=True)
    text, _, status = result.stdout.rpartition("\n")
    return int(status), json.loads(text)


def test_curl_classify_and_regress(server, exported):
    _, version_dir, _ = exported
    labels = read_manifest(version_dir).class_labels
    images = random_images(2, seed=8)
    body = {"examples": [{"images": image.reshape(-1).tolist()} for image in images]}
    status, document = curl(f"{server.http_url}/v1/models/digits:classify", body)
    assert status == 200, document
    expected = expected_classes(server, images, labels)
    assert [[label for label, _ in row] for row in document["result"]] == [
        [label for label, _ in row] for row in expected
    ]
    np.testing.assert_allclose(
        [[s for _, s in row] for row in document["result"]],
        [[s for _, s in row] for row in expected],
        rtol=1e-6,
    )
    status, document = curl(f"{server.http_url}/v1/models/digits/versions/1:regress", body)
    assert status == 501 and "bnserve serves classifiers" in document["error"]
    status, document = curl(
        f"{server.http_url}/v1/models/digits:classify", {"examples": [{"pixels": [0.0] * 64}]}
    )
    assert (
        status == 400
        and "examples[0]: no feature 'images' or 'image_bytes' (found pixels)" in document["error"]
    )
    status, document = curl(f"{server.http_url}/v1/models/digits/metadata")
    signatures = document["metadata"]["signature_def"]["signature_def"]
    assert signatures["classify"]["method_name"] == "tensorflow/serving/classify"
