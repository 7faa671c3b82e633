"""Encoded images (PNG, JPEG) as a model's input: the one rule behind the server's ``image_bytes`` input and
``bnserve predict``.

For a model input [N, H, W, C] (C 1 or 3) and the version's ImageMapping (lo, hi), one image becomes
[H, W, C] float32 by:

1. Refusals before any pixel is decoded: more than ``max_bytes`` bytes; a format other than PNG or JPEG
   (named when recognised: GIF, TIFF, BMP, WebP, SVG...); more than ``max_pixels`` pixels, width x height as
   the header declares them (a decompression bomb declares far more than it carries).
2. Pillow decodes it (a JPEG at the smallest of its DCT scales 1/1, 1/2, 1/4, 1/8 that still holds at least
   W x H, Pillow's ``draft``), then converts it to 8 bits: ``L`` for C = 1 (from colour, ITU-R 601-2 luma
   L = R 299/1000 + G 587/1000 + B 114/1000) or ``RGB`` for C = 3; transparency is dropped, and 16-bit grey
   is taken as round(v / 257).
3. Unless it is already W x H, it is resized to W x H with Pillow's ``Image.resize(..., BILINEAR)`` (its
   convolution resampling, antialiased when shrinking).
4. Each 8-bit pixel p becomes lo + p (hi - lo) / 255, in float32: p = 0 is the lowest value seen in the
   training inputs and p = 255 the highest (the manifest's ``image_bytes`` mapping, written at export).
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass

import numpy as np

from bnserve.core.errors import BnserveError

IMAGE_BYTES_INPUT = "image_bytes"
"""The BYTES input [N] of encoded images, the alternative to the tensor input ``images``."""
ACCEPTED_FORMATS = ("PNG", "JPEG")
MAX_IMAGE_BYTES = 8 << 20
"""Default cap on one encoded image."""
MAX_IMAGE_PIXELS = 4096 * 4096
"""Default cap on width x height as declared: 16.8M pixels, 50 MB decoded as RGB."""

# Leading bytes of formats that are refused, so that the refusal names what was sent.
_SIGNATURES = (
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"BM", "BMP"),
    (b"\x00\x00\x01\x00", "ICO"),
    (b"8BPS", "PSD"),
    (b"\x00\x00\x00\x0cjP  ", "JPEG 2000"),
    (b"\xff\x4f\xff\x51", "JPEG 2000"),
    (b"%PDF", "PDF"),
    (b"qoif", "QOI"),
)


class ImageRefused(BnserveError):
    """An encoded image the rule refuses; the message says why and what is expected (the caller prefixes
    the field)."""


@dataclass(frozen=True)
class ImageMapping:
    """8-bit pixel p -> value_at_0 + p (value_at_255 - value_at_0) / 255: the manifest's ``image_bytes``."""

    value_at_0: float
    value_at_255: float
    resize: str = "bilinear"

    def to_json(self) -> dict:
        return {
            "value_at_0": self.value_at_0,
            "value_at_255": self.value_at_255,
            "resize": self.resize,
            "formats": list(ACCEPTED_FORMATS),
        }

    @classmethod
    def from_json(cls, data) -> "ImageMapping":
        """ValueError names the field that is wrong."""
        if not isinstance(data, dict):
            raise ValueError("expected an object with value_at_0, value_at_255 and resize")
        values = []
        for key in ("value_at_0", "value_at_255"):
            value = data.get(key)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"{key}: expected a number, got {value!r}")
            if not np.isfinite(value):
                raise ValueError(f"{key}: expected a finite number, got {value!r}")
            values.append(float(value))
        if data.get("resize", "bilinear") != "bilinear":
            raise ValueError(f"resize: {data.get('resize')!r}, expected 'bilinear'")
        return cls(values[0], values[1])

    @classmethod
    def from_range(cls, value_range: tuple[float, float]) -> "ImageMapping":
        low, high = value_range
        return cls(float(low), float(high))

    def values(self, pixels: np.ndarray) -> np.ndarray:
        """8-bit pixels -> float32 model values, the rule's step 4."""
        scale = np.float32((self.value_at_255 - self.value_at_0) / 255.0)
        return pixels.astype(np.float32) * scale + np.float32(self.value_at_0)


_JPEG_FRAME_MARKERS = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def declared_pixels(data: bytes) -> int | None:
    """Width x height as a PNG's IHDR or a JPEG's frame header declares it, read without Pillow; None when
    neither is found (not PNG or JPEG, or truncated before the header)."""
    if data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) >= 24 and data[12:16] == b"IHDR":
        return int.from_bytes(data[16:20], "big") * int.from_bytes(data[20:24], "big")
    if not data.startswith(b"\xff\xd8"):
        return None
    offset = 2
    while offset + 4 <= len(data):
        if data[offset] != 0xFF:
            return None
        marker = data[offset + 1]
        if marker == 0xFF:  # fill byte
            offset += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # markers without a length
            offset += 2
            continue
        length = int.from_bytes(data[offset + 2 : offset + 4], "big")
        if marker in _JPEG_FRAME_MARKERS:
            if offset + 9 > len(data):
                return None
            height = int.from_bytes(data[offset + 5 : offset + 7], "big")
            width = int.from_bytes(data[offset + 7 : offset + 9], "big")
            return width * height
        offset += 2 + length
    return None


def format_of(data: bytes) -> str | None:
    """The name of a refused format recognised from its leading bytes, or None."""
    for prefix, name in _SIGNATURES:
        if data.startswith(prefix):
            return name
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WebP"
    if data[4:12] in (b"ftypavif", b"ftypheic", b"ftypmif1", b"ftypheix"):
        return "AVIF/HEIF"
    head = data[:256].lstrip().lower()
    if head.startswith((b"<?xml", b"<svg", b"<!doctype", b"<html")):
        return "SVG/XML"
    return None


def decode_image(
    data: bytes,
    shape: tuple[int, int, int],
    mapping: ImageMapping,
    max_bytes: int = MAX_IMAGE_BYTES,
    max_pixels: int = MAX_IMAGE_PIXELS,
) -> np.ndarray:
    """One PNG or JPEG -> float32 [H, W, C] by the module's rule; ImageRefused says why not."""
    from PIL import Image, UnidentifiedImageError

    height, width, channels = shape
    if channels not in (1, 3):
        raise ImageRefused(f"the model takes {channels} channels; encoded images need 1 or 3")
    if len(data) > max_bytes:
        raise ImageRefused(f"{len(data)} bytes, more than the {max_bytes} one image may have")
    if not data:
        raise ImageRefused("empty; expected PNG or JPEG bytes")
    refused = format_of(data)
    if refused is not None:
        raise ImageRefused(f"a {refused} image; expected PNG or JPEG")
    try:
        image = Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS)
    except UnidentifiedImageError:
        kind = _kind(data)
        if kind != "image":  # its signature, then a header Pillow could not read
            raise ImageRefused(
                f"corrupt or truncated {kind} (its header could not be read)"
            ) from None
        raise ImageRefused("not a PNG or JPEG image (unrecognised bytes)") from None
    except Image.DecompressionBombError as exc:  # Pillow's own limit, at twice MAX_IMAGE_PIXELS
        declared = re.search(r"\((\d+) pixels\)", str(exc))
        raise ImageRefused(
            f"declares {declared.group(1) if declared else 'too many'} pixels, more than the "
            f"{max_pixels} one image may have"
        ) from None
    except Exception as exc:  # Pillow's header parsers raise many kinds
        raise ImageRefused(f"corrupt or truncated {_kind(data)} header ({_reason(exc)})") from None
    with image:
        declared_width, declared_height = image.size
        if declared_width * declared_height > max_pixels:
            raise ImageRefused(
                f"declares {declared_width}x{declared_height} = {declared_width * declared_height} "
                f"pixels, more than the {max_pixels} one image may have"
            )
        if declared_width < 1 or declared_height < 1:
            raise ImageRefused(f"declares {declared_width}x{declared_height} pixels")
        try:
            if image.format == "JPEG":
                image.draft(None, (width, height))  # scale only: the colour stays the decoder's
            image.load()
            pixels = _eight_bit(image, channels)
        except ImageRefused:
            raise
        except Exception as exc:  # truncated data, bad chunks, CRC errors, decoder errors
            raise ImageRefused(f"corrupt or truncated {image.format} ({_reason(exc)})") from None
    if pixels.size != (width, height):
        pixels = pixels.resize((width, height), Image.Resampling.BILINEAR)
    array = np.asarray(pixels, np.uint8).reshape(height, width, channels)
    return mapping.values(array)


def _eight_bit(image, channels: int):
    from PIL import Image

    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        grey = np.clip(np.rint(np.asarray(image, np.float64) / 257.0), 0, 255).astype(np.uint8)
        image = Image.fromarray(grey, "L")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert(
            "RGBA"
        )  # Pillow warns when a palette's transparency is dropped directly
    target = "L" if channels == 1 else "RGB"
    return image.convert(target) if image.mode != target else image


def _kind(data: bytes) -> str:
    return (
        "PNG"
        if data.startswith(b"\x89PNG")
        else "JPEG"
        if data.startswith(b"\xff\xd8")
        else "image"
    )


def _reason(exc: Exception) -> str:
    text = str(exc).splitlines()[0][:200] if str(exc) else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def decode_images(
    items,
    shape: tuple[int, int, int],
    mapping: ImageMapping,
    field: str,
    max_bytes: int = MAX_IMAGE_BYTES,
    max_pixels: int = MAX_IMAGE_PIXELS,
) -> np.ndarray:
    """Encoded images -> float32 [N, H, W, C]; ImageRefused names ``field[i]``."""
    batch = np.empty((len(items), *shape), np.float32)
    for position, data in enumerate(items):
        try:
            batch[position] = decode_image(bytes(data), shape, mapping, max_bytes, max_pixels)
        except ImageRefused as exc:
            raise ImageRefused(f"{field}[{position}]: {exc}") from None
    return batch
