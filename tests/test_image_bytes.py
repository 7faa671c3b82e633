"""Encoded images as input: the image_bytes BYTES input on every protocol, with the clients users call.

The rule (bnserve/core/images.py) is re-implemented here with Pillow directly, so that the server's decode is
checked against the documented steps rather than against itself.
"""

import base64
import io
import json
import struct
import subprocess
import zlib

import grpc
import numpy as np
import pytest
import requests
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from PIL import Image
from tensorflow.core.example import example_pb2, feature_pb2
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    input_pb2,
    predict_pb2,
    prediction_service_pb2_grpc,
)
from tritonclient.grpc import model_config_pb2, service_pb2_grpc
from tritonclient.grpc import service_pb2 as v2

from bnserve.core.images import ImageMapping, ImageRefused, declared_pixels, decode_image
from bnserve.core.repository import read_manifest
from bnserve.trainer.data import load_dataset
from tests.helpers.cli import bnserve
from tests.helpers.serving import publish_copy, rss_mb
from tests.servers import start_server
from tests.tolerance import assert_same_function


@pytest.fixture(scope="module")
def version_dir(exported):
    return exported[1]


@pytest.fixture(scope="module")
def server(version_dir, tmp_path_factory):
    repository = tmp_path_factory.mktemp("image-bytes")
    publish_copy(version_dir, repository, "digits", 1)
    server = start_server(repository, "--max-image-bytes", "65536", http=True)
    yield server
    assert server.stop() == 0


@pytest.fixture(scope="module")
def digits():
    dataset = load_dataset("digits")
    return dataset.images[:24], dataset.labels[:24]


def pixels_of(values: np.ndarray) -> np.ndarray:
    """Digits values (0..16) as 8-bit grey, the inverse of the mapping the manifest records for them."""
    return np.clip(np.rint(values[..., 0] * 255.0 / 16.0), 0, 255).astype(np.uint8)


def encoded(pixels: np.ndarray, form: str, size=None, mode="L", quality=95) -> bytes:
    image = Image.fromarray(pixels, "L")
    if size is not None:
        image = image.resize(size, Image.Resampling.NEAREST)
    if mode != "L":
        image = image.convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, form, **({"quality": quality} if form == "JPEG" else {}))
    return buffer.getvalue()


def documented_decode(data: bytes, mapping: ImageMapping) -> np.ndarray:
    """The module's rule step by step with Pillow, for the digits input 8x8x1."""
    image = Image.open(io.BytesIO(data))
    if image.format == "JPEG":
        image.draft(None, (8, 8))
    image = image.convert("L")
    if image.size != (8, 8):
        image = image.resize((8, 8), Image.Resampling.BILINEAR)
    pixels = np.asarray(image, np.uint8).reshape(8, 8, 1).astype(np.float32)
    scale = np.float32((mapping.value_at_255 - mapping.value_at_0) / 255.0)
    return pixels * scale + np.float32(mapping.value_at_0)


FORMS = [
    ("PNG", None, "L"),
    ("PNG", (24, 24), "RGB"),
    ("PNG", (13, 8), "RGBA"),
    ("JPEG", (16, 16), "L"),
    ("JPEG", (40, 32), "RGB"),
    ("JPEG", (64, 64), "RGB"),  # decoded at DCT scale 1/8, then resized
]


def test_the_manifest_records_the_mapping_from_the_training_range(version_dir):
    manifest = read_manifest(version_dir)
    assert manifest.input_range == (0.0, 16.0)
    assert manifest.image_bytes == ImageMapping(0.0, 16.0)
    assert json.loads((version_dir / "manifest.json").read_text())["image_bytes"] == {
        "value_at_0": 0.0,
        "value_at_255": 16.0,
        "resize": "bilinear",
        "formats": ["PNG", "JPEG"],
    }


@pytest.mark.parametrize("form, size, mode", FORMS)
def test_the_decode_is_the_documented_rule_exactly(version_dir, digits, form, size, mode):
    mapping = read_manifest(version_dir).image_bytes
    for values in digits[0][:6]:
        data = encoded(pixels_of(values), form, size, mode)
        assert np.array_equal(
            decode_image(data, (8, 8, 1), mapping), documented_decode(data, mapping)
        )


def test_an_8x8_grey_png_gives_back_the_digit_within_a_pixel_step(version_dir, digits):
    mapping = read_manifest(version_dir).image_bytes
    values = digits[0][0]
    decoded = decode_image(encoded(pixels_of(values), "PNG"), (8, 8, 1), mapping)
    assert np.max(np.abs(decoded - values)) <= 16 / 255 / 2 + 1e-6


def test_rgb_models_get_three_channels_and_grey_is_replicated():
    mapping = ImageMapping(-1.0, 1.0)
    grey = np.arange(64, dtype=np.uint8).reshape(8, 8) * 4
    decoded = decode_image(encoded(grey, "PNG"), (8, 8, 3), mapping)
    assert decoded.shape == (8, 8, 3) and np.array_equal(decoded[..., 0], decoded[..., 2])
    assert decoded.min() == -1.0 and np.isclose(decoded.max(), -1 + 2 * 252 / 255)


def test_metadata_and_model_config_declare_image_bytes(server):
    channel, stub = stub_for(server.url)
    try:
        metadata = stub.ModelMetadata(v2.ModelMetadataRequest(name="digits"), timeout=10)
        assert [(t.name, t.datatype, list(t.shape)) for t in metadata.inputs] == [
            ("images", "FP32", [-1, 8, 8, 1]),
            ("image_bytes", "BYTES", [-1]),
        ]
        config = stub.ModelConfig(v2.ModelConfigRequest(name="digits"), timeout=10).config
        assert [(i.name, i.optional) for i in config.input] == [
            ("images", True),
            ("image_bytes", True),
        ]
        assert config.input[1].data_type == model_config_pb2.TYPE_STRING
        assert config.parameters["image_bytes_value_at_255"].string_value == "16.0"
    finally:
        channel.close()
    rest = requests.get(f"{server.http_url}/v2/models/digits", timeout=10).json()
    assert rest["inputs"][1] == {"name": "image_bytes", "datatype": "BYTES", "shape": [-1]}
    tf = requests.get(f"{server.http_url}/v1/models/digits/metadata", timeout=10).json()
    inputs = tf["metadata"]["signature_def"]["signature_def"]["serving_default"]["inputs"]
    assert inputs["image_bytes"]["dtype"] == "DT_STRING"
    with grpc.insecure_channel(server.url) as tf_channel:
        answer = prediction_service_pb2_grpc.PredictionServiceStub(tf_channel).GetModelMetadata(
            get_model_metadata_pb2.GetModelMetadataRequest(
                model_spec={"name": "digits"}, metadata_field=["signature_def"]
            ),
            timeout=10,
        )
    assert b"image_bytes" in answer.metadata["signature_def"].value


def tensor_probabilities(client_module, client, tensors: np.ndarray) -> np.ndarray:
    tensor = client_module.InferInput("images", list(tensors.shape), "FP32")
    tensor.set_data_from_numpy(tensors)
    return client.infer("digits", [tensor]).as_numpy("probabilities")


def test_png_and_jpeg_through_tritonclient_give_the_client_decode_and_its_class(
    server, version_dir, digits
):
    """Grey and RGB, several sizes: the same class as the client-side decode sent as a tensor, and the same
    probabilities to rounding; over gRPC, HTTP binary and HTTP JSON (b64)."""
    mapping = read_manifest(version_dir).image_bytes
    images, labels = digits
    grpc_client = grpcclient.InferenceServerClient(server.url)
    http_client = httpclient.InferenceServerClient(server.http_url.removeprefix("http://"))
    try:
        for form, size, mode in FORMS:
            files = [encoded(pixels_of(v), form, size, mode) for v in images]
            local = np.stack([documented_decode(data, mapping) for data in files])
            expected = tensor_probabilities(grpcclient, grpc_client, local)
            batch = np.array(files, dtype=object)
            grpc_input = grpcclient.InferInput("image_bytes", [len(files)], "BYTES")
            grpc_input.set_data_from_numpy(batch)
            served = grpc_client.infer("digits", [grpc_input]).as_numpy("probabilities")
            assert_same_function(served, expected, err_msg=f"{form} {size} {mode} gRPC")
            assert np.array_equal(served.argmax(1), expected.argmax(1))
            http_input = httpclient.InferInput("image_bytes", [len(files)], "BYTES")
            http_input.set_data_from_numpy(batch, binary_data=True)
            served_http = http_client.infer("digits", [http_input]).as_numpy("probabilities")
            assert_same_function(served_http, expected, err_msg=f"{form} {size} {mode} HTTP")
            body = {"inputs": [{"name": "image_bytes", "datatype": "BYTES", "shape": [len(files)],
                                "data": [{"b64": base64.b64encode(f).decode()} for f in files]}]}  # fmt: skip
            answer = requests.post(
                f"{server.http_url}/v2/models/digits/infer", json=body, timeout=30
            )
            assert answer.status_code == 200, answer.text
            probabilities = next(
                o for o in answer.json()["outputs"] if o["name"] == "probabilities"
            )
            assert_same_function(np.reshape(probabilities["data"], (-1, 10)), expected)
        # The lossless 8x8 PNGs are the digits themselves: the model's accuracy on them.
        files = [encoded(pixels_of(v), "PNG") for v in images]
        grpc_input = grpcclient.InferInput("image_bytes", [len(files)], "BYTES")
        grpc_input.set_data_from_numpy(np.array(files, dtype=object))
        served = grpc_client.infer("digits", [grpc_input]).as_numpy("probabilities")
        assert np.mean(served.argmax(1) == labels) >= 0.9
        # Triton's own [N, 1] BYTES shape is accepted too.
        grpc_input = grpcclient.InferInput("image_bytes", [len(files), 1], "BYTES")
        grpc_input.set_data_from_numpy(np.array(files, dtype=object).reshape(-1, 1))
        assert grpc_client.infer("digits", [grpc_input]).as_numpy("probabilities").shape == (24, 10)
    finally:
        grpc_client.close()
        http_client.close()


def tf_string_tensor(items: list[bytes]) -> tensor_pb2.TensorProto:
    return tensor_pb2.TensorProto(
        dtype=types_pb2.DT_STRING,
        tensor_shape=tensor_shape_pb2.TensorShapeProto(
            dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=len(items))]
        ),
        string_val=items,
    )


def test_tensorflow_serving_predict_and_classify_take_encoded_images(server, version_dir, digits):
    mapping = read_manifest(version_dir).image_bytes
    labels = read_manifest(version_dir).class_labels
    files = [encoded(pixels_of(v), "JPEG", (32, 32), "RGB") for v in digits[0][:5]]
    grpc_client = grpcclient.InferenceServerClient(server.url)
    try:
        local = np.stack([documented_decode(data, mapping) for data in files])
        expected = tensor_probabilities(grpcclient, grpc_client, local)
    finally:
        grpc_client.close()
    with grpc.insecure_channel(server.url) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        request = predict_pb2.PredictRequest(model_spec={"name": "digits"})
        request.inputs["image_bytes"].CopyFrom(tf_string_tensor(files))
        response = stub.Predict(request, timeout=30)
        served = np.frombuffer(
            response.outputs["probabilities"].tensor_content, np.float32
        ).reshape(-1, 10)
        assert_same_function(served, expected)
        examples = [
            example_pb2.Example(
                features=feature_pb2.Features(
                    feature={
                        "image_bytes": feature_pb2.Feature(
                            bytes_list=feature_pb2.BytesList(value=[data])
                        )
                    }  # fmt: skip
                )
            )
            for data in files
        ]
        classified = stub.Classify(
            classification_pb2.ClassificationRequest(
                model_spec={"name": "digits"},
                input=input_pb2.Input(example_list=input_pb2.ExampleList(examples=examples)),
            ),
            timeout=30,
        )
        tops = [c.classes[0].label for c in classified.result.classifications]
        assert tops == [labels[k] for k in expected.argmax(1)]
    b64 = [base64.urlsafe_b64encode(f).decode().rstrip("=") for f in files]  # web-safe, unpadded
    rows = requests.post(f"{server.http_url}/v1/models/digits:predict",
                         json={"instances": [{"b64": b} for b in b64]}, timeout=30)  # fmt: skip
    assert rows.status_code == 200, rows.text
    assert_same_function(
        np.array([p["probabilities"] for p in rows.json()["predictions"]]), expected
    )
    named = requests.post(f"{server.http_url}/v1/models/digits:predict",
                          json={"inputs": {"image_bytes": [{"b64": b} for b in b64]}}, timeout=30)  # fmt: skip
    assert named.status_code == 200, named.text
    curl = subprocess.run(
        ["curl", "-sS", "-X", "POST", f"{server.http_url}/v1/models/digits:classify", "-d",
         json.dumps({"examples": [{"image_bytes": {"b64": b}} for b in b64]})],
        capture_output=True, text=True, timeout=30, check=True,
    )  # fmt: skip
    result = json.loads(curl.stdout)["result"]
    assert [row[0][0] for row in result] == [labels[k] for k in expected.argmax(1)]


def png_declaring(width: int, height: int) -> bytes:
    """A 1x1 grey PNG whose IHDR (with a valid CRC) declares width x height."""
    data = encoded(np.zeros((1, 1), np.uint8), "PNG")
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    chunk = b"IHDR" + header
    return (
        data[:8] + struct.pack(">I", 13) + chunk + struct.pack(">I", zlib.crc32(chunk)) + data[33:]
    )


def other_format(form: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((8, 8), np.uint8), "L").save(buffer, form)
    return buffer.getvalue()


PNG = encoded(np.full((8, 8), 128, np.uint8), "PNG")
JPEG = encoded(np.full((8, 8), 128, np.uint8), "JPEG")
REFUSED = [
    (other_format("GIF"), "inputs[0] (image_bytes)[0]: a GIF image; expected PNG or JPEG"),
    (other_format("TIFF"), "a TIFF image; expected PNG or JPEG"),
    (other_format("BMP"), "a BMP image; expected PNG or JPEG"),
    (other_format("WEBP"), "a WebP image; expected PNG or JPEG"),
    (b'<svg xmlns="http://www.w3.org/2000/svg"/>', "a SVG/XML image; expected PNG or JPEG"),
    (b"", "empty; expected PNG or JPEG bytes"),
    (b"plain text", "not a PNG or JPEG image (unrecognised bytes)"),
    (PNG[: len(PNG) // 2], "corrupt or truncated PNG"),
    (JPEG[: len(JPEG) - 40], "corrupt or truncated JPEG"),
    (png_declaring(5000, 5000), "declares 5000x5000 = 25000000 pixels, more than the 16777216 one image"),
    (png_declaring(100_000, 100_000), "declares 10000000000 pixels, more than the 16777216 one image may have"),
    (PNG + b"\0" * 70_000, "bytes, more than the 65536 one image may have"),
]  # fmt: skip


@pytest.mark.parametrize("payload, message", REFUSED, ids=[m[:24] for _, m in REFUSED])
def test_each_hostile_image_is_refused_with_its_reason_on_both_protocols(server, payload, message):
    channel, stub = stub_for(server.url)
    request = v2.ModelInferRequest(
        model_name="digits",
        inputs=[v2.ModelInferRequest.InferInputTensor(name="image_bytes", datatype="BYTES", shape=[1])],
        raw_input_contents=[len(payload).to_bytes(4, "little") + payload],
    )  # fmt: skip
    try:
        with pytest.raises(grpc.RpcError) as caught:
            stub.ModelInfer(request, timeout=30)
    finally:
        channel.close()
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in caught.value.details(), caught.value.details()
    body = {"inputs": [{"name": "image_bytes", "datatype": "BYTES", "shape": [1],
                        "data": [{"b64": base64.b64encode(payload).decode()}]}]}  # fmt: skip
    answer = requests.post(f"{server.http_url}/v2/models/digits/infer", json=body, timeout=30)
    assert answer.status_code == 400 and message in answer.json()["error"], answer.text


@pytest.mark.parametrize(
    "inputs, message",
    [
        ([{"name": "images", "datatype": "FP32", "shape": [1, 8, 8, 1], "data": [0.0] * 64},
          {"name": "image_bytes", "datatype": "BYTES", "shape": [1], "data": [{"b64": ""}]}],
         "inputs: both 'images' and 'image_bytes'; send the tensor or the encoded images, not both"),
        ([{"name": "image_bytes", "datatype": "FP32", "shape": [1], "data": [0.0]}],
         "inputs[0].datatype: got FP32, expected BYTES (PNG or JPEG files) for 'image_bytes'"),
        ([{"name": "image_bytes", "datatype": "BYTES", "shape": [1, 2], "data": ["a", "b"]}],
         "inputs[0].shape: got [1, 2], expected [N] (one encoded image per element)"),
        ([{"name": "image_bytes", "datatype": "BYTES", "shape": [1], "data": [{"b64": "@@@"}]}],
         "inputs[0].data[0].b64: not base64"),
        ([{"name": "image_bytes", "datatype": "BYTES", "shape": [1], "data": [7]}],
         'inputs[0].data[0]: expected {"b64": "<base64>"} or a string, got a number'),
        ([{"name": "image_bytes", "datatype": "BYTES", "shape": [2], "data": [{"b64": ""}]}],
         "inputs[0].data: 1 elements, expected 2 for shape [2]"),
    ],
)  # fmt: skip
def test_malformed_image_bytes_requests_name_the_field(server, inputs, message):
    answer = requests.post(f"{server.http_url}/v2/models/digits/infer", json={"inputs": inputs},
                           timeout=30)  # fmt: skip
    assert answer.status_code == 400 and message in answer.json()["error"], answer.text


def test_mixing_on_grpc_and_tensorflow_serving_is_refused(server):
    with grpc.insecure_channel(server.url) as channel:
        request = predict_pb2.PredictRequest(model_spec={"name": "digits"})
        request.inputs["image_bytes"].CopyFrom(tf_string_tensor([PNG]))
        request.inputs["images"].CopyFrom(
            tensor_pb2.TensorProto(
                dtype=types_pb2.DT_FLOAT,
                tensor_shape=tensor_shape_pb2.TensorShapeProto(
                    dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=s) for s in (1, 8, 8, 1)]
                ),
                float_val=[0.0] * 64,
            )
        )
        with pytest.raises(grpc.RpcError) as caught:
            prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=30)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "both 'images' and 'image_bytes'" in caught.value.details()
    mixed = requests.post(f"{server.http_url}/v1/models/digits:classify", json={"examples": [
        {"images": [0.0] * 64}, {"image_bytes": {"b64": base64.b64encode(PNG).decode()}}]},
        timeout=30)  # fmt: skip
    assert mixed.status_code == 400
    assert "examples[1].image_bytes: the examples before it used the other feature" in mixed.text


def hostile_payload(rng: np.random.Generator) -> bytes:
    """One of: a valid image with flipped bytes, truncated, with a forged header size, random bytes, another
    format, a prefix of another format, or a valid image (control)."""
    base = [PNG, JPEG, encoded(np.arange(64, dtype=np.uint8).reshape(8, 8), "PNG", (50, 40), "RGB"),
            encoded(np.arange(64, dtype=np.uint8).reshape(8, 8), "JPEG", (33, 17), "RGB")]  # fmt: skip
    data = bytearray(base[rng.integers(0, len(base))])
    kind = rng.integers(0, 7)
    if kind == 0:
        for _ in range(rng.integers(1, 12)):
            data[rng.integers(0, len(data))] = rng.integers(0, 256)
    elif kind == 1:
        data = data[: rng.integers(0, len(data))]
    elif kind == 2:
        data = bytearray(
            png_declaring(int(rng.integers(1, 1 << 31)), int(rng.integers(1, 1 << 31)))
        )
    elif kind == 3:
        data = bytearray(rng.integers(0, 256, rng.integers(0, 4096), dtype=np.uint8).tobytes())
    elif kind == 4:
        data = bytearray(other_format(["GIF", "TIFF", "BMP", "WEBP", "ICO"][rng.integers(0, 5)]))
    elif kind == 5:
        data = bytearray(data[:8] + rng.integers(0, 256, 64, dtype=np.uint8).tobytes())
    return bytes(data)


def test_a_seeded_fuzz_of_500_hostile_images_gets_no_500_and_memory_returns(server):
    rng = np.random.default_rng(25)
    channel, stub = stub_for(server.url)
    baseline = rss_mb(server.process.pid)
    outcomes = {"OK": 0, "INVALID_ARGUMENT": 0}
    try:
        for case in range(520):
            payloads = [hostile_payload(rng) for _ in range(rng.integers(1, 4))]
            if case % 2:
                body = {"inputs": [{"name": "image_bytes", "datatype": "BYTES", "shape": [len(payloads)],
                                    "data": [{"b64": base64.b64encode(p).decode()} for p in payloads]}]}  # fmt: skip
                answer = requests.post(f"{server.http_url}/v2/models/digits/infer", json=body,
                                       timeout=30)  # fmt: skip
                assert answer.status_code in (200, 400), (case, answer.status_code, answer.text)
                assert answer.status_code == 200 or answer.json()["error"], answer.text
                outcomes["OK" if answer.status_code == 200 else "INVALID_ARGUMENT"] += 1
                continue
            request = v2.ModelInferRequest(
                model_name="digits",
                inputs=[v2.ModelInferRequest.InferInputTensor(
                    name="image_bytes", datatype="BYTES", shape=[len(payloads)],
                    contents=v2.InferTensorContents(bytes_contents=payloads))],
            )  # fmt: skip
            try:
                stub.ModelInfer(request, timeout=30)
                outcomes["OK"] += 1
            except grpc.RpcError as exc:
                assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT, (
                    case,
                    exc.code(),
                    exc.details(),
                )
                assert exc.details().startswith("inputs[0] (image_bytes)["), exc.details()
                outcomes["INVALID_ARGUMENT"] += 1
        assert outcomes["OK"] > 20 and outcomes["INVALID_ARGUMENT"] > 300, outcomes
        stub.ServerLive(v2.ServerLiveRequest(), timeout=5)
        # Decoded buffers are freed: resident memory ends within 64 MB of where it began (glibc keeps
        # some freed arenas; a leak of one decoded image per case would be ~500 x 8 KB at least, and a
        # decoded bomb alone 50 MB).
        assert rss_mb(server.process.pid) < baseline + 64, (baseline, rss_mb(server.process.pid))
    finally:
        channel.close()


def test_predict_sends_the_file_as_bytes_and_prints_the_same_labels(server, digits, tmp_path):
    path = tmp_path / "digit.png"
    path.write_bytes(encoded(pixels_of(digits[0][3]), "PNG", (28, 28), "RGB"))
    local = bnserve("predict", "--url", server.url, "--model", "digits", "--top", "2", str(path))
    sent = bnserve("predict", "--url", server.url, "--model", "digits", "--top", "2",
                   "--send-bytes", str(path))  # fmt: skip
    assert local.returncode == 0 and sent.returncode == 0, local.stderr + sent.stderr
    assert local.stdout == sent.stdout and "sample 0:" in sent.stdout, (local.stdout, sent.stdout)
    gif = tmp_path / "digit.gif.png"
    gif.write_bytes(other_format("GIF"))
    refused = bnserve("predict", "--url", server.url, "--model", "digits", "--send-bytes", str(gif))
    assert refused.returncode == 2
    assert "INVALID_ARGUMENT: inputs[0] (image_bytes)[0]: a GIF image; expected PNG or JPEG" in (
        refused.stderr
    )


def test_decode_refusals_are_image_refused_not_crashes():
    mapping = ImageMapping(0.0, 1.0)
    with pytest.raises(ImageRefused, match="declares 5x5 = 25 pixels, more than the 24"):
        decode_image(encoded(np.zeros((5, 5), np.uint8), "PNG"), (8, 8, 1), mapping, max_pixels=24)
    with pytest.raises(ImageRefused, match="the model takes 2 channels"):
        decode_image(PNG, (8, 8, 2), mapping)


def stub_for(url):
    """tritonclient's own v2 stubs: its protos and bnserve's share the package name `inference`, so one
    process imports only one of them."""
    channel = grpc.insecure_channel(url)
    return channel, service_pb2_grpc.GRPCInferenceServiceStub(channel)


@pytest.mark.parametrize(
    "data, pixels",
    [
        (encoded(np.zeros((8, 8), np.uint8), "PNG"), 64),
        (encoded(np.zeros((8, 8), np.uint8), "PNG", (40, 30)), 1200),
        (encoded(np.zeros((8, 8), np.uint8), "JPEG", (40, 30)), 1200),
        (encoded(np.zeros((8, 8), np.uint8), "JPEG", (33, 17), "RGB"), 561),
        (png_declaring(100_000, 3), 300_000),
        (b"GIF89a....", None),
        (b"\xff\xd8\xff", None),
    ],
)
def test_declared_pixels_reads_the_headers_pillow_would(data, pixels):
    """What decides whether a request is small enough to decode on the event loop."""
    assert declared_pixels(data) == pixels
