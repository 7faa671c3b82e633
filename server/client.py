"""``bnserve predict``: a thin KServe v2 client that prints the top classes."""

from __future__ import annotations

from pathlib import Path

import grpc
import numpy as np

from bnserve.core.errors import UserError
from bnserve.core.images import IMAGE_BYTES_INPUT, ImageMapping, ImageRefused, decode_image
from bnserve.protos import inference_pb2 as pb
from bnserve.protos import inference_pb2_grpc

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def read_input(
    path: Path, shape: list[int], mapping: ImageMapping | None, pixel_scale: float | None = None
) -> np.ndarray:
    """float32 [N,H,W,C] from .npy, .npz (array ``x`` or the only array) or a PNG/JPEG image.

    An image is decoded by the served version's own rule (bnserve.core.images, with ``mapping`` from its
    ModelConfig), so that it equals what the server makes of the same file sent as image_bytes;
    ``pixel_scale`` replaces the mapping by p -> p x pixel_scale."""
    height, width, channels = shape[1:]
    if not path.is_file():
        raise UserError(f"INPUT {str(path)!r}: no such file")
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            array = np.load(path, allow_pickle=False)
        elif suffix == ".npz":
            with np.load(path, allow_pickle=False) as archive:
                key = (
                    "x"
                    if "x" in archive.files
                    else (archive.files[0] if len(archive.files) == 1 else None)
                )
                if key is None:
                    raise UserError(
                        f"INPUT {str(path)!r}: expected an array 'x' or a single array, found {archive.files}"
                    )
                array = archive[key]
        elif suffix in IMAGE_SUFFIXES:
            if pixel_scale is not None:
                mapping = ImageMapping(0.0, 255.0 * pixel_scale)
            if mapping is None:
                raise UserError(
                    f"INPUT {str(path)!r}: the served version declares no pixel mapping (exported "
                    "without an input range); give --pixel-scale"
                )
            try:
                array = decode_image(path.read_bytes(), (height, width, channels), mapping)[None]
            except ImageRefused as exc:
                raise UserError(f"INPUT {str(path)!r}: {exc}") from None
        else:
            raise UserError(f"INPUT {str(path)!r}: expected .npy, .npz, .png, .jpg or .jpeg")
    except (OSError, ValueError) as exc:
        raise UserError(f"INPUT {str(path)!r}: unreadable ({exc})") from None
    array = np.asarray(array, np.float32)
    if array.shape == (height, width):
        array = array.reshape(1, height, width, 1)
    if array.shape == (height, width, channels):
        array = array[None]
    if array.ndim != 4 or list(array.shape[1:]) != [height, width, channels]:
        raise UserError(
            f"INPUT {str(path)!r}: shape {list(array.shape)}, expected [N, {height}, {width}, {channels}]"
        )
    return np.ascontiguousarray(array)


def served_mapping(config: pb.ModelConfigResponse) -> ImageMapping | None:
    """The image_bytes mapping a bnserve ModelConfig states (server/triton_documents.image_parameters)."""
    parameters = config.config.parameters
    try:
        return ImageMapping(
            float(parameters["image_bytes_value_at_0"].string_value),
            float(parameters["image_bytes_value_at_255"].string_value),
        )
    except (KeyError, ValueError):
        return None


def predict(
    url: str,
    model: str,
    version: str,
    path: Path,
    top: int,
    pixel_scale: float | None = None,
    send_bytes: bool = False,
    timeout: float = 30.0,
) -> str:
    """The top classes of INPUT's samples. With ``send_bytes`` an image file travels as it is, in the
    image_bytes input, and the server decodes it."""
    if send_bytes and path.suffix.lower() not in IMAGE_SUFFIXES:
        raise UserError(f"--send-bytes: INPUT {str(path)!r} is not a .png, .jpg or .jpeg file")
    if send_bytes and not path.is_file():
        raise UserError(f"INPUT {str(path)!r}: no such file")
    with grpc.insecure_channel(url) as channel:
        stub = inference_pb2_grpc.GRPCInferenceServiceStub(channel)
        try:
            metadata = stub.ModelMetadata(
                pb.ModelMetadataRequest(name=model, version=version), timeout=timeout
            )
            if send_bytes:
                if IMAGE_BYTES_INPUT not in [tensor.name for tensor in metadata.inputs]:
                    raise UserError(
                        f"--send-bytes: model {model!r} declares no {IMAGE_BYTES_INPUT!r} input"
                    )
                tensor = pb.ModelInferRequest.InferInputTensor(
                    name=IMAGE_BYTES_INPUT, datatype="BYTES", shape=[1]
                )
                encoded = path.read_bytes()
                raw = [len(encoded).to_bytes(4, "little") + encoded]
            else:
                config = stub.ModelConfig(
                    pb.ModelConfigRequest(name=model, version=version), timeout=timeout
                )
                images = read_input(
                    path, list(metadata.inputs[0].shape), served_mapping(config), pixel_scale
                )
                tensor = pb.ModelInferRequest.InferInputTensor(
                    name=metadata.inputs[0].name, datatype="FP32", shape=images.shape
                )
                raw = [images.tobytes()]
            request = pb.ModelInferRequest(
                model_name=model,
                model_version=version,
                inputs=[tensor],
                # Triton's classification extension: the server picks the top classes and names them.
                outputs=[
                    pb.ModelInferRequest.InferRequestedOutputTensor(
                        name="probabilities",
                        parameters={"classification": pb.InferParameter(int64_param=top)},
                    )
                ],
                raw_input_contents=raw,
            )
            response = stub.ModelInfer(request, timeout=timeout)
        except grpc.RpcError as exc:
            if exc.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT):
                raise UserError(f"{exc.code().name}: {exc.details()}") from None
            raise UserError(f"--url {url}: {exc.code().name}: {exc.details()}") from None
    output = response.outputs[0]
    entries = split_bytes(response.raw_output_contents[0])
    per_sample = int(output.shape[1]) if len(output.shape) == 2 else 0
    lines = [f"model {response.model_name} version {response.model_version}"]
    for index in range(int(output.shape[0]) if per_sample else 0):
        row = entries[index * per_sample : (index + 1) * per_sample]
        lines.append(f"sample {index}: " + ", ".join(describe_class(entry) for entry in row))
    return "\n".join(lines)


def split_bytes(raw: bytes) -> list[bytes]:
    """A raw BYTES tensor's elements: each a 4-byte little-endian length, then that many bytes."""
    entries, offset = [], 0
    while offset + 4 <= len(raw):
        length = int.from_bytes(raw[offset : offset + 4], "little")
        entries.append(raw[offset + 4 : offset + 4 + length])
        offset += 4 + length
    return entries


def describe_class(entry: bytes) -> str:
    """b"0.981234:3:three" -> "three 0.981234 (class 3)" (the score as the server printed it); the index
    alone when the label repeats it."""
    score, _, rest = entry.decode("utf-8", "replace").partition(":")
    index, _, label = rest.partition(":")
    if not label or label == index:
        return f"class {index} {score}"
    return f"{label} {score} (class {index})"


def drift(url: str, model: str, version: str, timeout: float = 30.0) -> str:
    """``bnserve drift``: the monitor's state of a served version, one line per BN layer."""
    from bnserve.protos import monitor_pb2, monitor_pb2_grpc

    with grpc.insecure_channel(url) as channel:
        try:
            status = monitor_pb2_grpc.MonitorStub(channel).Drift(
                monitor_pb2.DriftRequest(name=model, version=version), timeout=timeout
            )
        except grpc.RpcError as exc:
            if exc.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT):
                raise UserError(f"{exc.code().name}: {exc.details()}") from None
            raise UserError(f"--url {url}: {exc.code().name}: {exc.details()}") from None
    if not status.monitored:
        return f"model {status.name} version {status.version}: not monitored ({status.reason})"
    lines = [
        f"model {status.name} version {status.version}: {'ALARM' if status.alarm else 'ok'}; "
        f"{status.windows} windows of {status.window} samples (thresholds calibrated for {status.calibrated_window}), "
        f"{status.samples_in_window} in the open one, sample rate {status.sample_rate:g}, {status.dropped} dropped, "
        f"{status.skipped} skipped over the budget ("
        + (f"{status.max_share:g} of the model's compute time)" if status.max_share else "none)"),
        f"{'layer':>5}  {'name':<16} {'shift':>10} {'threshold':>10}  state",
    ]
    for layer in status.layers:
        score = f"{layer.score:10.4g}" if layer.has_score else f"{'-':>10}"
        state = "ALARM" if layer.alarm else ("ok" if layer.has_score else "no window yet")
        lines.append(f"{layer.layer:>5}  {layer.name:<16} {score} {layer.threshold:10.4g}  {state}")
    return "\n".join(lines)
