"""JSON for every HTTP surface (KServe v2 REST, TensorFlow Serving REST, Triton's documents): strict parsing
with errors that name the field, and protobuf messages written as Triton's HTTP endpoints write them."""

from __future__ import annotations

import json

import orjson
from google.protobuf.message import Message

from bnserve.server.errors import InvalidInput
from bnserve.server.tensors import json_type

DIGITS_AS_ZERO = bytes.maketrans(b"123456789", b"000000000")
NINETEEN_DIGITS = b"0" * 19
"""19 digits in a row (after DIGITS_AS_ZERO): possibly an integer beyond 64 bits, which orjson would read as a
float. Found by bytes.translate and a substring search, 2 us for a digits request, where a regular expression
took 29."""


def parse_json(text: bytes, field: str = "body"):
    """The JSON value of ``text``, or InvalidInput saying where it breaks (NaN/Infinity are not JSON).

    With orjson a digits request (64 numbers) parses in ~4-6 us, check included, against the standard library's
    ~27-29 us (the same floats, bit for bit).
    It takes what it reads exactly as the standard library would: no NaN or Infinity, the last of duplicate
    keys, integers within 64 bits. Anything else (an integer of 19 or more digits, which orjson would turn
    into a float; text that it refuses) goes to the standard library's parser, whose answer or error stands."""
    if isinstance(text, bytes) and NINETEEN_DIGITS not in text.translate(DIGITS_AS_ZERO):
        try:
            return orjson.loads(text)
        except orjson.JSONDecodeError:
            pass  # the parse below says where and why, in the words it always used

    def refuse_constant(name):
        raise ValueError(f"{name} is not a JSON number")

    try:
        return json.loads(text, parse_constant=refuse_constant)
    except json.JSONDecodeError as exc:
        raise InvalidInput(
            f"{field}: not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})"
        ) from None
    except UnicodeDecodeError:
        raise InvalidInput(f"{field}: not valid JSON (not UTF-8 text)") from None
    except RecursionError:
        raise InvalidInput(f"{field}: JSON nested too deeply") from None
    except ValueError as exc:
        raise InvalidInput(f"{field}: not valid JSON ({exc})") from None


def expect(value, kind: type | tuple[type, ...], field: str, what: str):
    """``value`` if it is a ``kind`` (a bool is never an int here), else InvalidInput naming the field."""
    if type(value) is kind:  # the usual case, decided at once (a bool's type is not int)
        return value
    if isinstance(value, bool) and kind in (int, (int, float)):
        raise InvalidInput(f"{field}: expected {what}, got a boolean")
    if not isinstance(value, kind):
        raise InvalidInput(f"{field}: expected {what}, got {json_type(value)}")
    return value


def optional_object(document: dict, key: str, field: str) -> dict:
    value = document.get(key, {})
    return expect(value, dict, field, "an object")


def message_json(message: Message) -> dict:
    """A protobuf message as the JSON Triton's HTTP endpoints answer: proto field names, every field with
    its default, integers as numbers (protobuf's JSON mapping writes 64-bit ones as strings), enums by name."""
    result = {}
    for field in message.DESCRIPTOR.fields:
        if (
            field.containing_oneof is not None
            and message.WhichOneof(field.containing_oneof.name) != field.name
        ):
            continue
        value = getattr(message, field.name)
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            value_field = field.message_type.fields_by_name["value"]
            result[field.name] = {key: field_json(value_field, item) for key, item in value.items()}
        elif field.label == field.LABEL_REPEATED:
            result[field.name] = [field_json(field, item) for item in value]
        elif field.message_type is not None and not message.HasField(field.name):
            continue
        else:
            result[field.name] = field_json(field, value)
    return result


def field_json(field, value):
    if field.message_type is not None:
        return message_json(value)
    if field.enum_type is not None:
        return field.enum_type.values_by_number[value].name
    return value


def may_hold_booleans(text: bytes) -> bool:
    """Whether JSON ``text`` can hold a boolean: only the tokens ``true`` and ``false`` write one, so text
    without those letters holds none (with them, a string may be all it is). Two substring searches: 2.6 us
    over a digits body (1.3 kB) on the host that measured it, against 5.0 us for tensors.holds_booleans."""
    return b"true" in text or b"false" in text


def json_document(document) -> bytes:
    """``document`` as JSON: orjson's text (~1 us for a digits answer against the standard library's ~13)
    unless it holds ``null``, then the standard library's. orjson writes NaN and infinities as null, where the
    standard library keeps the NaN/Infinity tokens that say what the model returned; an answer holds no null
    of its own, so a null in orjson's text is such a value (or those letters inside a string, which costs
    only the slower writer). One scan of the text, against a finiteness test of each output (4.0 us for a
    digits answer, np.isfinite(x).all(), on the host that measured both)."""
    text = orjson.dumps(document)
    if b"null" in text:
        return json.dumps(document, separators=(",", ":")).encode()
    return text
