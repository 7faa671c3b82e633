"""A real server process queried by real clients: tritonclient, tensorflow-serving-api, gRPC health."""

import subprocess
import sys

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
from tritonclient.grpc import service_pb2 as v2
from tritonclient.grpc import service_pb2_grpc as v2_grpc
from tritonclient.utils import InferenceServerException

from tests.tolerance import assert_same_function


@pytest.fixture(scope="module")
def client(server):
    return triton.InferenceServerClient(server.url)


@pytest.fixture(scope="module")
def raw_stub(server):
    channel = grpc.insecure_channel(server.url)
    yield v2_grpc.GRPCInferenceServiceStub(channel)
    channel.close()


@pytest.fixture(scope="module")
def in_process(serving_repository, server):
    """The same artifact run in this process by the backend's own runtime."""
    version_dir = serving_repository / "digits" / "1"
    if server.backend == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(
            str(version_dir / "model.onnx"), providers=["CPUExecutionProvider"]
        )
        return lambda x: dict(
            zip(
                ["logits", "probabilities"], session.run(["logits", "probabilities"], {"images": x})
            )
        )
    import tensorflow as tf

    signature = tf.saved_model.load(str(version_dir / "saved_model")).signatures["serving_default"]
    return lambda x: {k: v.numpy() for k, v in signature(images=tf.constant(x)).items()}


def images(batch, seed=0):
    return np.random.default_rng(seed).uniform(0, 16, (batch, 8, 8, 1)).astype(np.float32)


def infer(client, x, model="digits", version="", outputs=None):
    tensor = triton.InferInput("images", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    requested = [triton.InferRequestedOutput(name) for name in outputs] if outputs else None
    return client.infer(model, [tensor], model_version=version, outputs=requested)


def test_liveness_readiness_and_server_metadata(client):
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("digits") and client.is_model_ready("digits", "1")
    assert not client.is_model_ready("digits", "2") and not client.is_model_ready("absent")
    metadata = client.get_server_metadata()
    assert metadata.name == "bnserve" and {
        "model_configuration",
        "statistics",
        "model_repository",
    } <= set(metadata.extensions)


def test_model_metadata_and_config(client, server):
    metadata = client.get_model_metadata("digits")
    assert metadata.versions == ["1"]
    assert [(t.name, t.datatype, list(t.shape)) for t in metadata.inputs] == [
        ("images", "FP32", [-1, 8, 8, 1]),
        (
            "image_bytes",
            "BYTES",
            [-1],
        ),  # encoded images, the alternative (tests/test_image_bytes.py)
    ]
    assert [(t.name, list(t.shape)) for t in metadata.outputs] == [
        ("logits", [-1, 10]),
        ("probabilities", [-1, 10]),
    ]
    config = client.get_model_config("digits").config
    assert config.max_batch_size == 64 and list(config.input[0].dims) == [8, 8, 1]
    assert config.platform == (
        "onnxruntime_onnx" if server.backend == "onnx" else "tensorflow_savedmodel"
    )
    assert config.instance_group[0].kind == config.instance_group[0].KIND_CPU
    assert [o.name for o in config.output] == ["logits", "probabilities"]


@pytest.mark.parametrize("batch", [1, 64])
def test_predictions_equal_the_in_process_runtime(client, in_process, batch):
    x = images(batch, seed=batch)
    result = infer(client, x)
    expected = in_process(x)
    for name in ("logits", "probabilities"):
        assert result.as_numpy(name).shape == (batch, 10)
        assert_same_function(result.as_numpy(name), expected[name], err_msg=name)


def test_requested_output_subset(client):
    result = infer(client, images(2), outputs=["probabilities"])
    assert result.as_numpy("logits") is None
    np.testing.assert_allclose(result.as_numpy("probabilities").sum(axis=1), 1.0, atol=1e-5)


def test_typed_contents_are_accepted(raw_stub, in_process):
    x = images(3, seed=9)
    request = v2.ModelInferRequest(
        model_name="digits",
        inputs=[
            v2.ModelInferRequest.InferInputTensor(
                name="images",
                datatype="FP32",
                shape=[3, 8, 8, 1],
                contents=v2.InferTensorContents(fp32_contents=x.ravel().tolist()),
            )
        ],
    )
    response = raw_stub.ModelInfer(request)
    assert [o.name for o in response.outputs] == ["logits", "probabilities"]
    logits = np.frombuffer(response.raw_output_contents[0], np.float32).reshape(3, 10)
    assert_same_function(logits, in_process(x)["logits"])


def test_streaming_inference(client, in_process):
    """tritonclient's stream API (ModelStreamInfer): answers and per-request errors by request id."""
    import queue

    answers = queue.Queue()
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    try:
        for request_id in range(6):
            x = images(1, seed=request_id)
            model = "digits" if request_id != 3 else "absent"
            tensor = triton.InferInput("images", [1, 8, 8, 1], "FP32")
            tensor.set_data_from_numpy(x)
            client.async_stream_infer(model, [tensor], request_id=str(request_id))
        received = [answers.get(timeout=30) for _ in range(6)]
    finally:
        client.stop_stream()
    results = {r.get_response().id: r for r, e in received if e is None}
    errors = [e for _, e in received if e is not None]
    assert sorted(results) == ["0", "1", "2", "4", "5"]
    assert len(errors) == 1 and "NOT_FOUND: model 'absent' not found" in str(errors[0])
    for request_id, result in results.items():
        expected = in_process(images(1, seed=int(request_id)))["logits"]
        assert_same_function(result.as_numpy("logits"), expected)


def test_statistics_count_what_was_served(client):
    before = client.get_inference_statistics("digits", "1").model_stats[0]
    infer(client, images(5))
    after = client.get_inference_statistics("digits", "1").model_stats[0]
    assert after.inference_count == before.inference_count + 5
    assert after.execution_count == before.execution_count + 1
    assert after.inference_stats.success.count == before.inference_stats.success.count + 1
    assert any(b.batch_size == 5 for b in after.batch_stats)


def test_repository_index_reports_the_tampered_version(client):
    index = {(m.name, m.version): m for m in client.get_model_repository_index().models}
    assert index[("digits", "1")].state == "READY" and index[("other", "1")].state == "READY"
    refused = index[("digits", "2")]
    assert refused.state == "UNAVAILABLE" and "'model.onnx' has sha256" in refused.reason
    with pytest.raises(
        InferenceServerException, match="version 2 not found: unavailable: .*sha256"
    ):
        infer(client, images(1), version="2")
    infer(client, images(1), model="other")  # everything else keeps serving


def raw_request(**overrides):
    x = images(2)
    tensor = dict(name="images", datatype="FP32", shape=[2, 8, 8, 1])
    tensor.update(overrides.pop("tensor", {}))
    request = dict(
        model_name="digits",
        inputs=[v2.ModelInferRequest.InferInputTensor(**tensor)],
        raw_input_contents=[x.tobytes()],
    )
    request.update(overrides)
    return v2.ModelInferRequest(**request)


ERRORS = {
    "unknown-model": (dict(model_name="nope"), grpc.StatusCode.NOT_FOUND, "model 'nope' not found"),
    "unknown-version": (
        dict(model_version="7"),
        grpc.StatusCode.NOT_FOUND,
        "model 'digits' version 7 not found",
    ),
    "input-name": (
        dict(tensor=dict(name="pixels")),
        grpc.StatusCode.INVALID_ARGUMENT,
        "inputs[0].name: unknown input 'pixels'; expected 'images'",
    ),
    "datatype": (
        dict(tensor=dict(datatype="FP64", shape=[1, 8, 8, 1])),
        grpc.StatusCode.INVALID_ARGUMENT,
        "inputs[0].datatype: got FP64, expected FP32",
    ),
    "unknown-datatype": (
        dict(tensor=dict(datatype="FLOAT")),
        grpc.StatusCode.INVALID_ARGUMENT,
        "inputs[0].datatype: unknown datatype 'FLOAT'",
    ),
    "rank": (
        dict(tensor=dict(shape=[2, 64])),
        grpc.StatusCode.INVALID_ARGUMENT,
        "inputs[0].shape: got [2, 64] (rank 2), expected rank 4 [-1, 8, 8, 1]",
    ),
    "dims": (
        dict(tensor=dict(shape=[2, 8, 1, 8])),
        grpc.StatusCode.INVALID_ARGUMENT,
        "inputs[0].shape: got [2, 8, 1, 8], expected [-1, 8, 8, 1]",
    ),
    "byte-length": (
        dict(tensor=dict(shape=[3, 8, 8, 1])),
        grpc.StatusCode.INVALID_ARGUMENT,
        "raw_input_contents[0]: 512 bytes, expected 768 for shape [3, 8, 8, 1] of float32",
    ),
    "batch-over-limit": (
        dict(tensor=dict(shape=[65, 8, 8, 1]), raw_input_contents=[images(65).tobytes()]),
        grpc.StatusCode.INVALID_ARGUMENT,
        "inputs[0].shape: batch size 65, expected 1 to max_batch_size 64",
    ),
    "empty": (
        dict(inputs=[], raw_input_contents=[]),
        grpc.StatusCode.INVALID_ARGUMENT,
        "inputs: the request has no input; expected one named 'images'",
    ),
    "duplicate": (
        dict(
            inputs=[
                v2.ModelInferRequest.InferInputTensor(
                    name="images", datatype="FP32", shape=[1, 8, 8, 1]
                )
            ]
            * 2,
            raw_input_contents=[images(1).tobytes()] * 2,
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "inputs[1].name: duplicate input 'images'",
    ),
    "unknown-output": (
        dict(outputs=[v2.ModelInferRequest.InferRequestedOutputTensor(name="embedding")]),
        grpc.StatusCode.INVALID_ARGUMENT,
        "outputs[0].name: unknown output 'embedding'",
    ),
    "duplicate-output": (
        dict(outputs=[v2.ModelInferRequest.InferRequestedOutputTensor(name="logits")] * 2),
        grpc.StatusCode.INVALID_ARGUMENT,
        "outputs[1].name: duplicate output 'logits'; request each output once",
    ),
    "raw-and-typed": (
        dict(tensor=dict(contents=v2.InferTensorContents(fp32_contents=[0.0] * 128))),
        grpc.StatusCode.INVALID_ARGUMENT,
        "inputs[0].contents: the request carries raw_input_contents too; send each input either raw or "
        "typed, not both",
    ),
    "non-canonical-version": (
        dict(model_version="01"),
        grpc.StatusCode.NOT_FOUND,
        "model 'digits' version '01' not found: versions are canonical positive decimal",
    ),
    "huge-dims": (
        dict(tensor=dict(shape=[2, 1 << 20, 1 << 20, 1])),
        grpc.StatusCode.INVALID_ARGUMENT,
        "more than 268435456 elements",
    ),
}


@pytest.mark.parametrize("overrides, code, message", ERRORS.values(), ids=ERRORS.keys())
def test_bad_requests_get_precise_errors_and_the_next_request_works(
    raw_stub, client, overrides, code, message
):
    with pytest.raises(grpc.RpcError) as caught:
        raw_stub.ModelInfer(raw_request(**overrides))
    assert caught.value.code() == code
    assert message in caught.value.details()
    assert infer(client, images(1)).as_numpy("logits").shape == (1, 10)


def test_unload_and_load_through_the_repository_api(client):
    client.unload_model("other")
    assert not client.is_model_ready("other")
    index = {(m.name, m.version): m.state for m in client.get_model_repository_index().models}
    assert index[("other", "1")] == "UNLOADED"
    client.load_model("other")
    assert client.is_model_ready("other")
    with pytest.raises(InferenceServerException, match="not found"):
        client.load_model("absent")


def test_tensorflow_serving_client(server, in_process):
    import tensorflow as tf
    from tensorflow_serving.apis import (
        get_model_metadata_pb2,
        get_model_status_pb2,
        model_service_pb2_grpc,
        predict_pb2,
        prediction_service_pb2_grpc,
    )

    with grpc.insecure_channel(server.url) as channel:
        prediction = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        x = images(4, seed=5)
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "digits"
        request.model_spec.signature_name = "serving_default"
        request.inputs["images"].CopyFrom(tf.make_tensor_proto(x))
        request.output_filter.append("logits")
        response = prediction.Predict(request)
        assert list(response.outputs) == ["logits"] and response.model_spec.version.value == 1
        assert_same_function(tf.make_ndarray(response.outputs["logits"]), in_process(x)["logits"])

        metadata_request = get_model_metadata_pb2.GetModelMetadataRequest(
            metadata_field=["signature_def"]
        )
        metadata_request.model_spec.name = "digits"
        metadata = prediction.GetModelMetadata(metadata_request)
        signatures = get_model_metadata_pb2.SignatureDefMap()
        assert metadata.metadata["signature_def"].Unpack(signatures)
        signature = signatures.signature_def["serving_default"]
        assert [d.size for d in signature.inputs["images"].tensor_shape.dim] == [-1, 8, 8, 1]
        assert set(signature.outputs) == {"logits", "probabilities"}

        status_request = get_model_status_pb2.GetModelStatusRequest()
        status_request.model_spec.name = "digits"
        status = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(status_request)
        states = {s.version: s for s in status.model_version_status}
        assert states[1].state == get_model_status_pb2.ModelVersionStatus.AVAILABLE
        assert (
            states[2].state == get_model_status_pb2.ModelVersionStatus.END
            and "sha256" in states[2].status.error_message
        )

        request.model_spec.name = "absent"
        with pytest.raises(grpc.RpcError) as caught:
            prediction.Predict(request)
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND


def test_health_overall_and_per_model(server):
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(server.url) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "digits", "other"):
            assert (
                health.Check(health_pb2.HealthCheckRequest(service=service)).status
                == health_pb2.HealthCheckResponse.SERVING
            )
        with pytest.raises(grpc.RpcError) as caught:
            health.Check(health_pb2.HealthCheckRequest(service="absent"))
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND


def test_reflection_lists_the_services(server):
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    with grpc.insecure_channel(server.url) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        responses = stub.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")])
        )
        services = {s.name for r in responses for s in r.list_services_response.service}
    assert services == {
        "inference.GRPCInferenceService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
        "tensorflow.serving.PredictionService",
        "tensorflow.serving.ModelService",
        "bnserve.Monitor",
    }


def test_tensorflow_is_imported_only_by_the_tensorflow_backend(server):
    assert ("libtensorflow" in server.loaded_libraries()) == (server.backend == "tf")


def test_predict_command(server, tmp_path):
    np.save(tmp_path / "two.npy", images(2))
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "bnserve.cli",
            "predict",
            "--url",
            server.url,
            "--model",
            "digits",
            str(tmp_path / "two.npy"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    client = triton.InferenceServerClient(server.url)
    tensor = triton.InferInput("images", [2, 8, 8, 1], "FP32")
    tensor.set_data_from_numpy(images(2))
    probabilities = client.infer("digits", [tensor]).as_numpy("probabilities")
    client.close()
    expected = ["model digits version 1"] + [
        f"sample {i}: "
        + ", ".join(f"class {k} {row[k]:f}" for k in np.argsort(-row, kind="stable")[:3])
        for i, row in enumerate(probabilities)
    ]
    assert result.stdout.strip().splitlines() == expected
