"""Which asyncio HTTP library fronts bnserve: a no-op 1-sample infer on each candidate, same client.

Each candidate runs in its own process on the default asyncio loop (the loop grpc.aio needs, so
no uvloop), answers POST /v2/models/digits/infer with a prepared JSON body after reading the request
body, and is driven by h2load over HTTP/1.1 (one request in flight per connection).

    python bench/http_library.py [--seconds 3] [--repository R]      # prints a Markdown table

With ``--repository`` (one holding the digits model, e.g. the one `make run` serves) the table ends with
bnserve itself on that model, same pinning and client: a real 1-sample JSON infer.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.loadgen import main_phase_seconds  # noqa: E402

WARMUP_S = 0.5
PINNED = (os.cpu_count() or 1) > 1
"""Server on core 0, h2load on core 1 where there are two: the library is what is measured."""
RESPONSE = json.dumps(
    {
        "model_name": "digits",
        "model_version": "1",
        "outputs": [
            {"name": name, "datatype": "FP32", "shape": [1, 10], "data": [0.1] * 10}
            for name in ("logits", "probabilities")
        ],
    }
).encode()
REQUEST = json.dumps(
    {
        "inputs": [
            {
                "name": "images",
                "datatype": "FP32",
                "shape": [1, 8, 8, 1],
                "data": [float(i % 17) for i in range(64)],
            }
        ]
    }
).encode()

CANDIDATES = {
    "aiohttp": """
import asyncio, sys
from aiohttp import web
async def infer(request):
    await request.read()
    return web.Response(body=RESPONSE, content_type="application/json")
async def main():
    app = web.Application()
    app.router.add_post("/v2/models/{name}/infer", infer)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    print("port", runner.addresses[0][1], flush=True)
    await asyncio.Event().wait()
asyncio.run(main())
""",
    "uvicorn (httptools, raw ASGI)": """
import asyncio, socket
import uvicorn
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(RESPONSE)).encode())]})
    await send({"type": "http.response.body", "body": RESPONSE})
async def main():
    sock = socket.socket(); sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1); sock.bind(("127.0.0.1", 0))
    print("port", sock.getsockname()[1], flush=True)
    config = uvicorn.Config(app, loop="none", http="httptools", lifespan="off", access_log=False, log_level="warning")
    await uvicorn.Server(config).serve(sockets=[sock])
asyncio.run(main())
""",
}


def run_h2load(port: int, connections: int, seconds: float, body: Path) -> tuple[float, float]:
    client_pin = ["taskset", "-c", "1"] if PINNED else []
    output = subprocess.run(
        [
            *client_pin,
            "h2load",
            "--h1",
            "-D",
            f"{round(seconds * 1000)}ms",
            f"--warm-up-time={round(WARMUP_S * 1000)}ms",
            "-c",
            str(connections),
            "-m",
            "1",
            "-t",
            "1",
            "-d",
            str(body),
            "-H",
            "content-type: application/json",
            f"http://127.0.0.1:{port}/v2/models/digits/infer",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    succeeded = int(re.search(r"(\d+) succeeded", output).group(1))
    status_2xx = int(re.search(r"(\d+) 2xx", output).group(1))
    assert status_2xx == succeeded, output
    wall = main_phase_seconds(output, WARMUP_S)
    mean_ms = re.search(r"time for request:\s+\S+\s+\S+\s+(\S+)", output).group(1)
    mean = float(mean_ms[:-2]) / 1000 if mean_ms.endswith("us") else float(mean_ms[:-2])
    return succeeded / wall, mean


def measure(seconds: float, repository: Path | None = None) -> list[str]:
    rows = [
        "| library | c=1 req/s | c=1 mean ms | c=32 req/s | c=32 mean ms |",
        "|---|---|---|---|---|",
    ]
    with tempfile.TemporaryDirectory() as work:
        body = Path(work) / "request.json"
        body.write_bytes(REQUEST)
        for name, source in CANDIDATES.items():
            program = f"RESPONSE = {RESPONSE!r}\n" + source
            pin = ["taskset", "-c", "0"] if PINNED else []
            errors = open(Path(work) / "stderr", "w+")  # a file: a full pipe would stall the server
            server = subprocess.Popen(
                [*pin, sys.executable, "-c", program],
                stdout=subprocess.PIPE,
                stderr=errors,
                text=True,
            )
            try:
                first = server.stdout.readline().split()
                if first[:1] != ["port"]:
                    server.wait()
                    raise RuntimeError(
                        f"{name} did not start (exit {server.returncode}; the bench extra installs "
                        f"every candidate): {Path(errors.name).read_text().strip()[-500:]}"
                    )
                port = int(first[1])
                time.sleep(0.5)
                c1 = run_h2load(port, 1, seconds, body)
                c32 = run_h2load(port, 32, seconds, body)
            finally:
                server.terminate()
                server.wait()
                errors.close()
            package, _, detail = name.partition(" ")
            library = f"{package} {metadata.version(package)} {detail}".rstrip()
            rows.append(
                f"| {library} | {c1[0]:,.0f} | {c1[1]:.3f} | {c32[0]:,.0f} | {c32[1]:.3f} |"
            )
        if repository is not None:
            from tests.servers import start_server

            served = start_server(
                repository, "--model-control", "none", http=True, pin="0" if PINNED else None
            )
            try:
                c1 = run_h2load(served.http_port, 1, seconds, body)
                c32 = run_h2load(served.http_port, 32, seconds, body)
            finally:
                served.stop()
            rows.append(
                f"| *bnserve on aiohttp, real 1-sample JSON infer, same pinning* | *{c1[0]:,.0f}* | "
                f"*{c1[1]:.3f}* | *{c32[0]:,.0f}* | *{c32[1]:.3f}* |"
            )
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument(
        "--repository", type=Path, help="also measure bnserve serving its digits model"
    )
    arguments = parser.parse_args()
    print("\n".join(measure(arguments.seconds, arguments.repository)))
