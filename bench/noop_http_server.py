"""The HTTP stack's ceiling: aiohttp (bnserve's HTTP library) answering POST .../infer with a constant response.

Same library, loop and settings as bnserve's HTTP port: the body is read, a prepared KServe v2 binary
response is sent; no JSON parsing, validation, batching or model. With ``--model VERSION_DIR`` each
request also runs that version's model.onnx once on the one row at the end of its binary body, through
bnserve's ONNX Runtime backend with one thread (as it runs a light model) on the event loop: the floor
of any server that calls the model once a request.

    python bench/noop_http_server.py --port 0      # logs "listening on 127.0.0.1:PORT"
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from pathlib import Path

import numpy as np
from aiohttp import web


async def serve(port: int, version_dir: Path | None = None) -> None:
    logits = np.zeros((1, 10), np.float32).tobytes()
    header = json.dumps(
        {
            "model_name": "digits",
            "model_version": "1",
            "outputs": [
                {
                    "name": name,
                    "datatype": "FP32",
                    "shape": [1, 10],
                    "parameters": {"binary_data_size": len(logits)},
                }
                for name in ("logits", "probabilities")
            ],
        },
        separators=(",", ":"),
    ).encode()
    body = header + logits + logits

    backend = None
    if version_dir is not None:
        from bnserve.server.backends.onnx import OnnxBackend

        backend = OnnxBackend(version_dir, "cpu", intra_op_threads=1)
        row_shape = backend.signature()[0][0].shape[1:]
        row_bytes = int(np.prod(row_shape)) * 4

    async def infer(request):
        data = await request.read()
        if backend is not None:
            backend.run(
                np.frombuffer(data[-row_bytes:], np.float32).reshape([1, *row_shape]),
                ["logits", "probabilities"],
            )
        return web.Response(
            body=body,
            content_type="application/octet-stream",
            headers={"Inference-Header-Content-Length": str(len(header))},
        )

    app = web.Application()
    app.router.add_post("/v2/models/{model}/infer", infer)
    app.router.add_post("/v1/models/{model}:predict", infer)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    print(f"listening on 127.0.0.1:{runner.addresses[0][1]}", file=sys.stderr, flush=True)
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(signum, stop.set)
    await stop.wait()
    await runner.cleanup()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument(
        "--model",
        type=Path,
        metavar="VERSION_DIR",
        help="also run this version's model.onnx once on each request's last input row",
    )
    parser.add_argument(
        "--event-loop",
        choices=("asyncio", "uvloop"),
        default="asyncio",
        help="asyncio: the floor as docs/benchmarks.md defines it; uvloop: the floor on bnserve's default loop",
    )
    arguments = parser.parse_args()
    if arguments.event_loop == "uvloop":
        import uvloop

        uvloop.run(serve(arguments.port, arguments.model))
    else:
        asyncio.run(serve(arguments.port, arguments.model))
