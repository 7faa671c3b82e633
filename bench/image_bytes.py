"""Encoded images against raw FP32 tensors: served throughput at c=1 and c=32, and the decode cost per image.

The same server answers both kinds of request, interleaved within each repeat (the machine's speed drifts
within minutes, so a ratio is only fair between runs measured in the same minutes). Writes
docs/image-bytes.md.
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import struct
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.loadgen import median_result, run_load  # noqa: E402
from bench.run import COMPUTE_MODEL, bnserve, platform_line  # noqa: E402
from bnserve.core.images import ImageMapping, decode_image  # noqa: E402
from tests.servers import start_server  # noqa: E402

CONCURRENCIES = (1, 32)


def photo(height: int, width: int, channels: int, seed: int = 0) -> np.ndarray:
    """A smooth 8-bit picture (gradients plus a disc) so that JPEG sizes are those of real photographs
    rather than of noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width] / max(height, width)
    base = 128 + 100 * np.sin(6 * x + rng.uniform(0, 3)) * np.cos(4 * y)
    disc = ((x - 0.5) ** 2 + (y - 0.5) ** 2 < 0.1) * 60
    picture = np.clip(base + disc, 0, 255).astype(np.uint8)
    return np.repeat(picture[..., None], channels, axis=2) if channels == 3 else picture


def jpeg(pixels: np.ndarray, quality: int = 90) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def png(pixels: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


def infer_body(model: str, name: str, datatype: str, shape, raw: bytes) -> bytes:
    from bnserve.protos import inference_pb2 as pb

    request = pb.ModelInferRequest(
        model_name=model,
        inputs=[pb.ModelInferRequest.InferInputTensor(name=name, datatype=datatype, shape=shape)],
        raw_input_contents=[raw],
    )
    message = request.SerializeToString()
    return b"\x00" + struct.pack(">I", len(message)) + message


def bytes_body(model: str, encoded: bytes) -> bytes:
    return infer_body(
        model, "image_bytes", "BYTES", [1], len(encoded).to_bytes(4, "little") + encoded
    )


def tensor_body(model: str, shape: tuple[int, ...]) -> bytes:
    values = np.random.default_rng(0).uniform(0, 16, (1, *shape)).astype(np.float32)
    return infer_body(model, "images", "FP32", list(values.shape), values.tobytes())


def decode_cost_us(encoded: bytes, shape: tuple[int, int, int], repeats: int = 7) -> float:
    """Median over ``repeats`` of the mean time of one decode_image call (in process, one thread)."""
    mapping = ImageMapping(0.0, 16.0)
    calls = max(20, int(2e5 // max(len(encoded), 1)))
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        for _ in range(calls):
            decode_image(encoded, shape, mapping)
        times.append((time.perf_counter() - started) / calls * 1e6)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "image-bytes.md")
    args = parser.parse_args()
    started = time.perf_counter()
    lines: list[str] = []
    with tempfile.TemporaryDirectory() as directory:
        work = Path(directory)
        repository = work / "repository"
        bnserve("train", "--out", str(work / "digits-run"))
        bnserve(
            "export", str(work / "digits-run"), "--repository", str(repository), "--name", "digits"
        )
        bnserve("train", "--out", str(work / "conv6-run"), *COMPUTE_MODEL)
        bnserve(
            "export", str(work / "conv6-run"), "--repository", str(repository), "--name", "conv6"
        )
        grey_8, rgb_32, rgb_640 = photo(8, 8, 1), photo(32, 32, 3), photo(480, 640, 3)
        cases = [
            ("digits", "FP32 tensor [1,8,8,1]", tensor_body("digits", (8, 8, 1)), None),
            ("digits", "JPEG 8x8 grey", bytes_body("digits", jpeg(grey_8)), len(jpeg(grey_8))),
            (
                "digits",
                "JPEG 640x480 RGB (resized)",
                bytes_body("digits", jpeg(rgb_640)),
                len(jpeg(rgb_640)),
            ),  # fmt: skip
            ("conv6", "FP32 tensor [1,32,32,3]", tensor_body("conv6", (32, 32, 3)), None),
            ("conv6", "JPEG 32x32 RGB", bytes_body("conv6", jpeg(rgb_32)), len(jpeg(rgb_32))),
            (
                "conv6",
                "JPEG 640x480 RGB (resized)",
                bytes_body("conv6", jpeg(rgb_640)),
                len(jpeg(rgb_640)),
            ),  # fmt: skip
        ]
        server = start_server(repository)
        try:
            runs: dict[tuple[int, int], list] = {}
            for _ in range(args.repeats):  # every case and concurrency once per repeat: interleaved
                for index, (_, _, body, _) in enumerate(cases):
                    for concurrency in CONCURRENCIES:
                        result = run_load(
                            server.port, body, concurrency, args.seconds, server.process.pid
                        )
                        runs.setdefault((index, concurrency), []).append(result)
        finally:
            server.stop()
    results = {key: median_result(value) for key, value in runs.items()}
    lines += [
        "# Encoded images (image_bytes) against raw FP32 tensors",
        "",
        f"Produced by `make bench` (`python bench/image_bytes.py --seconds {args.seconds} --repeats "
        f"{args.repeats}`) in {time.perf_counter() - started:.0f} s on {os.cpu_count()} cores "
        f"({platform_line()}). h2load, 1-image ModelInfer requests (raw contents: FP32, or one "
        "length-prefixed JPEG in image_bytes), the cases interleaved within each repeat; each figure the "
        f"median of {args.repeats} runs of {args.seconds:g} s. Server and load generator share the cores.",
        "",
        "## Served",
        "",
        "| model | request | JPEG bytes | concurrency | req/s | vs FP32 tensor | p50 ms | p99 ms | "
        "server CPU (cores) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for index, (model, name, _, size) in enumerate(cases):
        baseline_index = next(i for i, case in enumerate(cases) if case[0] == model)
        for concurrency in CONCURRENCIES:
            r = results[(index, concurrency)]
            base = results[(baseline_index, concurrency)]
            lines.append(
                f"| {model} | {name} | {size or '-'} | {concurrency} | {r.throughput:,.0f} | "
                f"{r.throughput / base.throughput:.2f} | {r.p50_ms:.3f} | {r.p99_ms:.3f} | "
                f"{r.server_cores:.2f} |"
            )
    lines += [
        "",
        "## Decode cost per image",
        "",
        "In process, one thread, `bnserve.core.images.decode_image` (decode, convert, resize, map), median "
        "of 7 timed loops:",
        "",
        "| image | bytes | target | microseconds per image |",
        "|---|---|---|---|",
    ]
    for label, encoded, shape in [
        ("PNG 8x8 grey", png(grey_8), (8, 8, 1)),
        ("JPEG 8x8 grey", jpeg(grey_8), (8, 8, 1)),
        ("JPEG 32x32 RGB", jpeg(rgb_32), (32, 32, 3)),
        ("PNG 32x32 RGB", png(rgb_32), (32, 32, 3)),
        ("JPEG 640x480 RGB", jpeg(rgb_640), (8, 8, 1)),
        ("JPEG 640x480 RGB", jpeg(rgb_640), (32, 32, 3)),
        ("JPEG 640x480 RGB", jpeg(rgb_640), (224, 224, 3)),
        ("PNG 640x480 RGB", png(rgb_640), (224, 224, 3)),
    ]:
        lines.append(
            f"| {label} | {len(encoded):,} | {'x'.join(map(str, shape))} | "
            f"{decode_cost_us(encoded, shape):,.0f} |"
        )
    lines += [
        "",
        "A JPEG is decoded at the smallest DCT scale that still holds the target (Pillow's `draft`), so a "
        "640x480 photograph for an 8x8 or 32x32 model costs a fraction of its full decode; a PNG has no "
        "such scale and is decoded whole.",
    ]
    args.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
