"""The HTTP stack's ceiling: aiohttp (bnserve's HTTP library) answering POST .../infer with a constant response.

Same library, loop and settings as bnserve's HTTP port: the body is read, a prepared KServe v2 binary
response is sent; no JSON parsing, validation, batching or model. With ``--onnx MODEL`` each request
also runs MODEL once on the one row at the end of its binary body (ONNX Runtime, one thread, on the
event loop): the floor of any server that calls the model once a request.

    python bench/noop_http_server.py --port 0      # logs "listening on 127.0.0.1:PORT"
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys

import numpy as np
from aiohttp import web


async def serve(port: int, onnx: str | None = None) -> None:
    logits = np.zeros((1, 10), np.float32).tobytes()
    header = json.dumps({"model_name": "digits", "model_version": "1", "outputs": [
        {"name": name, "datatype": "FP32", "shape": [1, 10], "parameters": {"binary_data_size": len(logits)}}
        for name in ("logits", "probabilities")]}, separators=(",", ":")).encode()
    body = header + logits + logits

    session = None
    if onnx:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = 1
        session = onnxruntime.InferenceSession(onnx, options, providers=["CPUExecutionProvider"])
        row_shape = [int(d) for d in session.get_inputs()[0].shape[1:]]
        row_bytes = int(np.prod(row_shape)) * 4

    async def infer(request):
        data = await request.read()
        if session is not None:
            session.run(["logits", "probabilities"],
                        {"images": np.frombuffer(data[-row_bytes:], np.float32).reshape([1, *row_shape])})
        return web.Response(body=body, content_type="application/octet-stream",
                            headers={"Inference-Header-Content-Length": str(len(header))})

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
    parser.add_argument("--onnx", help="also run this model.onnx once on each request's last input row")
    arguments = parser.parse_args()
    asyncio.run(serve(arguments.port, arguments.onnx))
