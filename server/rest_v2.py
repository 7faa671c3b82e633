"""KServe v2 / Open Inference Protocol over HTTP: JSON tensors and Triton's binary tensor data extension.

An infer body is a JSON object; with the binary extension, the header ``Inference-Header-Content-Length: N``
says the first N bytes are that JSON and the rest is the inputs' raw bytes, in input order, each input
claiming ``parameters.binary_data_size`` of them. Outputs come back as JSON ``data`` (flat, row-major)
unless asked for in binary (``outputs[i].parameters.binary_data`` or the request's
``parameters.binary_data_output``), which are then appended after the JSON the same way.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from bnserve.server.dataplane import InferenceRequest, InferenceResponse, InferInput
from bnserve.server.errors import InvalidInput
from bnserve.server.json_codec import (
    expect,
    json_document,
    may_hold_booleans,
    optional_object,
    parse_json,
)
from bnserve.server.tensors import (
    V2_TO_NUMPY,
    array_from_json,
    array_from_raw,
    bytes_from_json,
    bytes_from_raw,
    element_count,
    raw_contents,
)

HEADER_LENGTH = "Inference-Header-Content-Length"
MAX_TIMEOUT_US = 10**15
"""About 31 years: any longer timeout cannot be held as a float of seconds without losing meaning."""


@dataclass(frozen=True)
class OutputEncoding:
    binary: dict[str, bool]
    """Per requested output: sent in binary?"""
    binary_by_default: bool
    """For outputs not named in the request (all of them when it names none)."""

    def is_binary(self, name: str) -> bool:
        return self.binary.get(name, self.binary_by_default)


def parse_infer(
    body: bytes,
    header_length: str | None,
    model_name: str,
    model_version: str,
    timeout_s: float | None = None,
) -> tuple[InferenceRequest, OutputEncoding]:
    """An HTTP infer body -> the domain request (inputs viewed, not copied, where binary) and how to encode
    the outputs; InvalidInput names the field and what was expected."""
    view = memoryview(body)
    if header_length is None:
        header, binary = view, view[len(view) :]
    else:
        try:
            length = int(header_length)
        except ValueError:
            raise InvalidInput(
                f"{HEADER_LENGTH}: expected a byte count, got {header_length!r}"
            ) from None
        if not 0 < length <= len(body):
            raise InvalidInput(
                f"{HEADER_LENGTH}: {length}, but the body holds {len(body)} bytes; expected 1 to "
                f"{len(body)} (the length of the JSON part)"
            )
        header, binary = view[:length], view[length:]
    text = bytes(header)
    document = parse_json(text, "body" if header_length is None else "body (JSON header)")
    expect(document, dict, "body", 'a JSON object with "inputs"')
    request_id = expect(document.get("id", ""), str, "id", "a string")
    parameters = optional_object(document, "parameters", "parameters")
    binary_by_default = expect(
        parameters.get("binary_data_output", False),
        bool,
        "parameters.binary_data_output",
        "true or false",
    )
    timeout_us = parameters.get("timeout")
    if timeout_us is not None:
        expect(timeout_us, int, "parameters.timeout", "microseconds as an integer")
        if not 0 <= timeout_us <= MAX_TIMEOUT_US:
            digits = len(str(abs(timeout_us)))
            shown = timeout_us if digits <= 20 else f"an integer of {digits} digits"
            raise InvalidInput(
                f"parameters.timeout: {shown}, expected microseconds from 0 to {MAX_TIMEOUT_US}"
            )
        timeout_s = timeout_us / 1e6 if timeout_s is None else min(timeout_s, timeout_us / 1e6)
    if "inputs" not in document:
        raise InvalidInput("inputs: missing; expected a list of input tensors")
    inputs_json = expect(document["inputs"], list, "inputs", "a list of input tensors")
    inputs = []
    offset = 0
    for position, tensor in enumerate(inputs_json):
        field = f"inputs[{position}]"
        expect(tensor, dict, field, "an object with name, shape, datatype and data")
        for key in ("name", "shape", "datatype"):
            if key not in tensor:
                raise InvalidInput(f"{field}.{key}: missing")
        name = expect(tensor["name"], str, f"{field}.name", "a string")
        datatype = expect(tensor["datatype"], str, f"{field}.datatype", "a string")
        dtype = V2_TO_NUMPY.get(datatype)
        if dtype is None and datatype != "BYTES":
            raise InvalidInput(
                f"{field}.datatype: unknown datatype {datatype!r}; expected one of "
                f"{', '.join(V2_TO_NUMPY)}, BYTES"
            )
        shape = expect(tensor["shape"], list, f"{field}.shape", "a list of dimensions")
        for axis, dim in enumerate(shape):
            expect(dim, int, f"{field}.shape[{axis}]", "an integer")
        element_count(shape, f"{field}.shape")
        tensor_parameters = optional_object(tensor, "parameters", f"{field}.parameters")
        size = tensor_parameters.get("binary_data_size")
        if size is not None:
            expect(size, int, f"{field}.parameters.binary_data_size", "a byte count")
            if "data" in tensor:
                raise InvalidInput(
                    f"{field}: has both data and parameters.binary_data_size; send it one way"
                )
            if size < 0 or offset + size > len(binary):
                raise InvalidInput(
                    f"{field}.parameters.binary_data_size: {size} bytes, but the binary section has "
                    f"{len(binary) - offset} left (truncated body, or a wrong "
                    f"{HEADER_LENGTH})"
                )
            chunk = binary[offset : offset + size]
            data = (
                bytes_from_raw(chunk, shape, f"{field} (binary data)")
                if dtype is None
                else array_from_raw(chunk, dtype, shape, f"{field} (binary data)")
            )
            offset += size
        elif "data" in tensor:
            data = (
                bytes_from_json(tensor["data"], shape, f"{field}.data")
                if dtype is None
                else array_from_json(
                    tensor["data"], dtype, shape, f"{field}.data", may_hold_booleans(text)
                )
            )
        else:
            raise InvalidInput(
                f"{field}.data: missing; expected data, or parameters.binary_data_size with the "
                f"bytes after the JSON header ({HEADER_LENGTH})"
            )
        inputs.append(InferInput(name, datatype, data))
    if offset != len(binary):
        raise InvalidInput(
            f"body: {len(binary) - offset} bytes after the JSON header that no input claims with "
            "parameters.binary_data_size"
        )
    outputs_json = expect(
        document.get("outputs", []), list, "outputs", "a list of requested outputs"
    )
    names, binary_flags, counts = [], {}, []
    for position, output in enumerate(outputs_json):
        field = f"outputs[{position}]"
        expect(output, dict, field, "an object with a name")
        if "name" not in output:
            raise InvalidInput(f"{field}.name: missing")
        name = expect(output["name"], str, f"{field}.name", "a string")
        output_parameters = optional_object(output, "parameters", f"{field}.parameters")
        binary_flags[name] = expect(
            output_parameters.get("binary_data", binary_by_default),
            bool,
            f"{field}.parameters.binary_data",
            "true or false",
        )
        if "classification" in output_parameters:
            count = output_parameters["classification"]
            if isinstance(count, bool) or not isinstance(count, int):
                raise InvalidInput(
                    f"{field}.parameters.classification: {json.dumps(count)[:40]}; expected an integer "
                    "class count"
                )
            # Binary stays allowed: tritonclient.http asks for it by default, and BYTES travel in
            # binary as length-prefixed strings, as Triton sends them.
            if "shared_memory_region" in output_parameters:
                raise InvalidInput(
                    f"{field}.parameters.classification: cannot be combined with "
                    "shared_memory_region; the classification extension returns strings in the response"
                )
            counts.append((name, count))
        names.append(name)
    request = InferenceRequest(
        model_name,
        model_version,
        request_id,
        tuple(inputs),
        tuple(names),
        timeout_s,
        tuple(counts),
    )
    return request, OutputEncoding(binary_flags, binary_by_default)


def encode_infer(response: InferenceResponse, encoding: OutputEncoding) -> tuple[bytes, int | None]:
    """The response body and, when some output is binary, the length of its JSON part."""
    outputs, chunks = [], []
    for output in response.outputs:
        entry = {"name": output.name, "datatype": output.datatype, "shape": list(output.data.shape)}
        if encoding.is_binary(output.name):
            raw = raw_contents(output)
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        elif output.datatype == "BYTES":  # classification strings (ASCII: value, index and label)
            entry["data"] = [item.decode("utf-8", "replace") for item in output.data.reshape(-1)]
        else:
            entry["data"] = output.data.reshape(-1).tolist()
        outputs.append(entry)
    document = {
        "model_name": response.model_name,
        "model_version": response.model_version,
        "outputs": outputs,
    }
    if response.id:
        document["id"] = response.id
    header = json_document(document)
    if not chunks:
        return header, None
    return b"".join([header, *chunks]), len(header)
