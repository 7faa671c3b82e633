"""parse_json, encode_infer and predict_body: orjson's fast paths answer exactly what the standard library answers."""

from __future__ import annotations

import json
import math
import random

import pytest

from bnserve.server.errors import InvalidInput
from bnserve.server.json_codec import parse_json


def reference(text: bytes):
    """The standard library's reading, with NaN and Infinity refused as parse_json refuses them."""

    def refuse(name):
        raise ValueError(name)

    return json.loads(text, parse_constant=refuse)


def same(a, b) -> bool:
    """Equal values of the same types all the way down (1 and 1.0 differ; so do 0.0 and -0.0)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, float):
        return a == b and math.copysign(1, a) == math.copysign(1, b) or (a != a and b != b)
    return a == b


def random_document(draw: random.Random, depth: int = 0):
    kind = draw.randrange(9 if depth < 4 else 6)
    if kind == 0:
        return draw.uniform(-1, 1) * 10 ** draw.randint(-300, 300)
    if kind == 1:  # integers on both sides of 64 bits
        return draw.choice([1, -1]) * draw.randrange(10 ** draw.randint(0, 30))
    if kind == 2:
        return draw.choice([True, False, None, 0.0, -0.0, 1e-7, 5e-324])
    if kind == 3:
        return "".join(
            draw.choice('aé\u00fc\u4e2d\U0001f600"\\\n\t/') for _ in range(draw.randrange(8))
        )
    if kind in (4, 5):
        return [draw.uniform(-3, 3) for _ in range(draw.randrange(64))]
    if kind in (6, 7):
        return {
            f"k{draw.randrange(4)}": random_document(draw, depth + 1)
            for _ in range(draw.randrange(5))
        }
    return [random_document(draw, depth + 1) for _ in range(draw.randrange(4))]


def test_random_documents_read_as_the_standard_library_reads_them():
    draw = random.Random(26)
    for _ in range(3000):
        document = random_document(draw)
        text = json.dumps(document, ensure_ascii=draw.random() < 0.5).encode()
        assert same(parse_json(text), reference(text)), text[:200]


@pytest.mark.parametrize(
    "text",
    [
        b'{"a": 1, "a": 2}',  # the last duplicate wins
        b"123456789012345678901234567890",  # beyond 64 bits: an int, not orjson's float
        b"-9223372036854775809",
        b"18446744073709551615",
        b"[1e400]",  # the standard library's infinity (array_from_json refuses it later)
        b'"\\ud800"',  # a lone surrogate: orjson refuses it, the standard library reads it
        b"\xef\xbb\xbf[1]",  # a byte-order mark
        b'{"id": "12345678901234567890", "x": 0.5}',
        b" [1.5e-7, -0.0] ",
    ],
)
def test_edge_cases_read_as_the_standard_library_reads_them(text):
    try:
        expected = reference(text)
    except (ValueError, RecursionError):
        with pytest.raises(InvalidInput):
            parse_json(text)
        return
    assert same(parse_json(text), expected)


@pytest.mark.parametrize(
    "text, message",
    [
        (b"[NaN]", "body: not valid JSON (NaN is not a JSON number)"),
        (b'{"a": Infinity}', "body: not valid JSON (Infinity is not a JSON number)"),
        (b"[1,]", "body: not valid JSON (Expecting value at line 1 column 4)"),
        (b'{"a": 1} x', "body: not valid JSON (Extra data at line 1 column 10)"),
        (b"\xff\xfe\xfa", "body: not valid JSON"),
        (b"[" * 100_000, "body: JSON nested too deeply"),
    ],
)
def test_refusals_keep_their_messages(text, message):
    with pytest.raises(InvalidInput) as refused:
        parse_json(text)
    assert str(refused.value).startswith(message), str(refused.value)


def test_infer_response_json_reads_as_the_standard_library_writes_it():
    """encode_infer's orjson document parses to what json.dumps of the same document parses to; outputs that
    hold NaN or infinity keep the standard library's NaN/Infinity tokens (orjson would write null)."""
    import numpy as np

    from bnserve.server.dataplane import InferenceResponse, InferOutput
    from bnserve.server.rest_v2 import OutputEncoding, encode_infer

    draw = np.random.default_rng(26)
    logits = (draw.standard_normal((3, 10)) * 10.0 ** draw.integers(-30, 30, (3, 10))).astype(
        np.float32
    )
    labels = np.array([[b"0.9:3:tr\xc3\xa8s"], [b"0.5:1:b"], [b"0.1:0:c"]], dtype=object)
    response = InferenceResponse(
        "m",
        "1",
        "request-\u00e9",
        (InferOutput("logits", "FP32", logits), InferOutput("labels", "BYTES", labels)),
    )
    text, header_length = encode_infer(response, OutputEncoding({}, False))
    assert header_length is None
    document = json.loads(text)
    assert document["outputs"][0]["data"] == logits.reshape(-1).tolist()
    assert document["outputs"][1]["data"] == ["0.9:3:tr\u00e8s", "0.5:1:b", "0.1:0:c"]
    assert document["id"] == "request-\u00e9" and document["model_version"] == "1"

    logits[1, 2], logits[2, 0] = np.nan, np.inf
    text, _ = encode_infer(response, OutputEncoding({}, False))
    assert b"NaN" in text and b"Infinity" in text
    values = json.loads(text)["outputs"][0]["data"]
    assert math.isnan(values[12]) and values[20] == math.inf


@pytest.mark.parametrize("row_format", [True, False])
def test_tfserving_predict_json_reads_as_the_standard_library_writes_it(row_format):
    """predict_body (TensorFlow Serving REST) parses to what json.dumps of encode_predict's document parses to,
    one output or several; NaN and infinity keep the standard library's tokens."""
    import numpy as np

    from bnserve.server.dataplane import InferenceResponse, InferOutput
    from bnserve.server.rest_tfserving import encode_predict, predict_body

    draw = np.random.default_rng(27)
    logits = (draw.standard_normal((3, 10)) * 10.0 ** draw.integers(-30, 30, (3, 10))).astype(
        np.float32
    )
    probabilities = draw.random((3, 10)).astype(np.float32)
    for outputs in (
        (InferOutput("logits", "FP32", logits),),
        (
            InferOutput("logits", "FP32", logits),
            InferOutput("probabilities", "FP32", probabilities),
        ),
    ):
        response = InferenceResponse("m", "1", "", outputs)
        expected = json.loads(json.dumps(encode_predict(response, row_format)))
        assert json.loads(predict_body(response, row_format)) == expected

    logits[1, 2], logits[2, 0] = np.nan, np.inf
    response = InferenceResponse("m", "1", "", (InferOutput("logits", "FP32", logits),))
    text = predict_body(response, row_format)
    assert b"NaN" in text and b"Infinity" in text
    rows = json.loads(text)["predictions" if row_format else "outputs"]
    assert math.isnan(rows[1][2]) and rows[2][0] == math.inf


def test_json_document_takes_orjson_unless_its_text_holds_null():
    """orjson's text when it holds no null; the standard library's when it does: a NaN or infinity, which
    orjson writes as null, or the letters inside a string, which reads the same either way."""
    import orjson

    from bnserve.server.json_codec import json_document

    plain = {"model_name": "m", "outputs": [{"name": "logits", "data": [1.5, -2.0, 3e38]}]}
    assert json_document(plain) == orjson.dumps(plain)
    named = {"model_name": "nullable", "id": "caf\u00e9", "outputs": [{"data": [0.25]}]}
    assert json.loads(json_document(named)) == named
    assert json_document(named) == json.dumps(named, separators=(",", ":")).encode()
    unbounded = {"outputs": [{"data": [float("nan"), float("-inf"), 1.0]}]}
    assert json_document(unbounded) == b'{"outputs":[{"data":[NaN,-Infinity,1.0]}]}'


@pytest.mark.parametrize(
    "values",
    [[True, 1.5], [1.5, False], [1, True], [[1.0], [True]], [[[2.0, 3.0]], [[False, 1.0]]]],
)
def test_booleans_among_numbers_are_refused_not_read_as_one_and_zero(values):
    """NumPy reads [true, 1.5] as [1.0, 1.5]; a boolean where a number belongs is refused instead, for float
    and integer tensors alike (array_from_json: booleans are not numbers)."""
    import numpy as np

    from bnserve.server.json_codec import may_hold_booleans
    from bnserve.server.tensors import array_from_json

    text = json.dumps({"data": values}).encode()
    assert may_hold_booleans(text)
    for dtype in (np.float32, np.int32):
        with pytest.raises(InvalidInput, match="got true/false among them"):
            array_from_json(parse_json(text)["data"], np.dtype(dtype), None, "data")
    assert not may_hold_booleans(json.dumps({"data": [1.5, 2, [3e5]]}).encode())
    numbers = array_from_json([[1.0], [2.0]], np.dtype(np.float32), None, "d", False)
    assert numbers.tolist() == [[1.0], [2.0]]
