"""Datatype tables and conversions between wire tensors and NumPy arrays (raw bytes, no Python lists)."""

from __future__ import annotations

import base64
import binascii

import numpy as np

from bnserve.server.errors import InvalidInput

# KServe v2 datatype -> NumPy dtype (little-endian, as the protocol specifies for raw contents).
V2_TO_NUMPY = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
}
NUMPY_TO_V2 = {dtype: name for name, dtype in V2_TO_NUMPY.items()}

# InferTensorContents field holding each datatype in typed form.
V2_CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
}

# tensorflow.DataType numbers -> NumPy dtype, and TensorProto's typed field for each.
TF_TO_NUMPY = {
    1: np.dtype("<f4"),
    2: np.dtype("<f8"),
    3: np.dtype("<i4"),
    4: np.dtype("<u1"),
    5: np.dtype("<i2"),
    6: np.dtype("<i1"),
    9: np.dtype("<i8"),
    10: np.dtype(np.bool_),
    19: np.dtype("<f2"),
}
NUMPY_TO_TF = {dtype: number for number, dtype in TF_TO_NUMPY.items()}
TF_VALUES_FIELD = {
    1: "float_val",
    2: "double_val",
    3: "int_val",
    4: "int_val",
    5: "int_val",
    6: "int_val",
    9: "int64_val",
    10: "bool_val",
    19: "half_val",
}

# A dimension beyond this is refused before any allocation.
MAX_ELEMENTS = 1 << 28


def element_count(shape, field: str) -> int:
    count = 1
    for dim in shape:
        if dim < 0:
            raise InvalidInput(f"{field}: dimensions must be >= 0, got {list(shape)}")
        count *= dim
        if count > MAX_ELEMENTS:
            raise InvalidInput(f"{field}: {list(shape)} holds more than {MAX_ELEMENTS} elements")
    return count


def array_from_raw(raw: bytes, dtype: np.dtype, shape, field: str) -> np.ndarray:
    """A read-only view of ``raw`` as ``shape``; the byte length must match exactly."""
    expected = element_count(shape, field) * dtype.itemsize
    if len(raw) != expected:
        raise InvalidInput(
            f"{field}: {len(raw)} bytes, expected {expected} for shape {list(shape)} of {dtype.name}"
        )
    return np.frombuffer(raw, dtype=dtype).reshape(shape)


def array_from_values(values, dtype: np.dtype, shape, field: str) -> np.ndarray:
    expected = element_count(shape, field)
    if len(values) != expected:
        raise InvalidInput(
            f"{field}: {len(values)} values, expected {expected} for shape {list(shape)}"
        )
    return np.asarray(values, dtype=dtype).reshape(shape)


FP32_MAX = float(np.finfo(np.float32).max)


def array_from_json(
    values, dtype: np.dtype, shape, field: str, booleans_possible: bool = True
) -> np.ndarray:
    """JSON numbers (a flat list, or nested lists in row-major order) as ``dtype`` in ``shape`` (None: the
    shape of the nesting itself, as TensorFlow Serving's REST API reads it).

    Strict where NumPy would guess: booleans are not numbers (and only booleans fill BOOL), strings and
    ragged lists are refused, floats fill integer types only when integral, and a float beyond the FP32
    range is refused rather than turned into infinity. ``booleans_possible``: False when the JSON text held
    neither ``true`` nor ``false`` (json_codec.may_hold_booleans), which spares the look for them among
    numbers (NumPy reads [true, 1.5] as [1.0, 1.5])."""
    if not isinstance(values, list):
        raise InvalidInput(f"{field}: expected a list of numbers, got {json_type(values)}")
    try:
        array = np.array(values)
    except (ValueError, OverflowError):
        expected = (
            "equal-length nested lists"
            if shape is None
            else f"a flat or row-major nested list for shape {list(shape)}"
        )
        raise InvalidInput(
            f"{field}: nested lists of unequal length, or numbers out of range; expected "
            f"{expected} of numbers"
        ) from None
    kind = array.dtype.kind
    if dtype.kind == "b":
        if kind != "b" and array.size:
            raise InvalidInput(
                f"{field}: expected true/false values for BOOL, got {json_kind(array)}"
            )
    elif kind not in "iuf" and array.size:
        raise InvalidInput(f"{field}: expected numbers, got {json_kind(array)}")
    elif booleans_possible and holds_booleans(values):
        raise InvalidInput(
            f"{field}: expected numbers for {NUMPY_TO_V2[dtype]}, got true/false among them"
        )
    elif dtype.kind in "iu" and kind == "f":
        if not np.all(np.isfinite(array)) or not np.array_equal(array, np.round(array)):
            raise InvalidInput(
                f"{field}: expected integers for {NUMPY_TO_V2[dtype]}, got fractional numbers"
            )
    elif dtype == np.float32 and kind == "f" and array.size and np.abs(array).max() > FP32_MAX:
        raise InvalidInput(f"{field}: a value is beyond the FP32 range (±{FP32_MAX:.6g})")
    if dtype.kind in "iu" and array.size and kind in "iu":
        info = np.iinfo(dtype)
        if array.min() < info.min or array.max() > info.max:
            raise InvalidInput(f"{field}: a value is outside the {NUMPY_TO_V2[dtype]} range")
    return array_from_values(
        array.reshape(-1), dtype, array.shape if shape is None else shape, field
    )


def holds_booleans(values: list) -> bool:
    """Whether nested JSON lists hold a true or false anywhere (NumPy reads them among numbers as 1 and 0)."""
    pending = [values]
    while pending:
        items = pending.pop()
        kinds = set(map(type, items))
        if bool in kinds:
            return True
        if list in kinds:
            pending.extend(item for item in items if type(item) is list)
    return False


def json_type(value) -> str:
    return {
        dict: "an object",
        list: "a list",
        str: "a string",
        bool: "a boolean",
        int: "a number",
        float: "a number",
        type(None): "null",
    }.get(type(value), type(value).__name__)


def json_kind(array: np.ndarray) -> str:
    return {
        "b": "booleans",
        "U": "strings",
        "O": "mixed values (strings, objects, nulls or huge integers)",
    }.get(array.dtype.kind, array.dtype.name)


def raw_contents(output) -> bytes:
    """An output's raw_output_contents entry: the tensor's bytes, or for BYTES each element as a 4-byte
    little-endian length and its bytes (the v2 protocol's raw BYTES layout)."""
    if output.datatype != "BYTES":
        return output.data.tobytes()
    return b"".join(len(item).to_bytes(4, "little") + item for item in output.data.reshape(-1))


# -- BYTES tensors (encoded images): object arrays of bytes ----------------------------------------------


def object_array(items: list, shape, field: str) -> np.ndarray:
    expected = element_count(shape, field)
    if len(items) != expected:
        raise InvalidInput(
            f"{field}: {len(items)} elements, expected {expected} for shape {list(shape)}"
        )
    array = np.empty(len(items), dtype=object)
    array[:] = items
    return array.reshape(shape)


def bytes_from_raw(raw, shape, field: str) -> np.ndarray:
    """The v2 raw BYTES layout (each element a 4-byte little-endian length, then its bytes) as an object
    array of ``shape``; a length that runs past the end, or a count that differs, is refused."""
    expected = element_count(shape, field)
    view, items, offset = memoryview(raw), [], 0
    while offset < len(view):
        if len(items) == expected:
            raise InvalidInput(
                f"{field}: {len(view) - offset} bytes after the {expected} elements of shape "
                f"{list(shape)}; expected none"
            )
        if offset + 4 > len(view):
            raise InvalidInput(
                f"{field}: element {len(items)}: {len(view) - offset} bytes left, expected a 4-byte "
                "length prefix"
            )
        length = int.from_bytes(view[offset : offset + 4], "little")
        offset += 4
        if offset + length > len(view):
            raise InvalidInput(
                f"{field}: element {len(items)} declares {length} bytes, {len(view) - offset} left"
            )
        items.append(bytes(view[offset : offset + length]))
        offset += length
    return object_array(items, shape, field)


def json_bytes(value, field: str) -> bytes:
    """One JSON BYTES element: {"b64": base64} (standard or web-safe alphabet, padding optional; TensorFlow
    Serving's REST form for binary) or a string, taken as its UTF-8 bytes."""
    if isinstance(value, str):
        return value.encode("utf-8")
    if not (isinstance(value, dict) and set(value) == {"b64"} and isinstance(value["b64"], str)):
        raise InvalidInput(
            f'{field}: expected {{"b64": "<base64>"}} or a string, got {json_type(value)}'
        )
    text = value["b64"].strip().translate(WEB_SAFE)
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInput(f"{field}.b64: not base64 ({len(text)} characters)") from None


WEB_SAFE = str.maketrans("-_", "+/")


def bytes_from_json(values, shape, field: str) -> np.ndarray:
    """JSON BYTES (a flat or nested list of json_bytes elements) as an object array of ``shape`` (None: the
    nesting's own shape)."""
    if not isinstance(values, list):
        raise InvalidInput(
            f'{field}: expected a list of {{"b64": ...}} elements, got {json_type(values)}'
        )
    flat, nesting = [], []

    def walk(item, depth, where):
        if isinstance(item, list):
            if len(nesting) <= depth:
                nesting.append(len(item))
            elif nesting[depth] != len(item):
                raise InvalidInput(f"{field}: nested lists of unequal length")
            for position, inner in enumerate(item):
                walk(inner, depth + 1, f"{where}[{position}]")
        else:
            if len(nesting) != depth:
                raise InvalidInput(f"{field}: nested lists of unequal depth")
            flat.append(json_bytes(item, where))

    walk(values, 0, field)
    return object_array(flat, nesting if shape is None else shape, field)
