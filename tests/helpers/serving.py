"""A running server from the outside: publishing versions as the exporter does, gRPC stubs and requests,
waiting, metrics."""

import json
import re
import shutil
import time
import urllib.request
from pathlib import Path

import grpc
from tritonclient.grpc import service_pb2 as v2
from tritonclient.grpc import service_pb2_grpc as v2_grpc

from tests.requests import random_images, v2_request

POLL = "0.2"


def publish_copy(source: Path, repository: Path, name: str, version: int, mutate=None) -> Path:
    """Publish ``source`` as REPO/NAME/VERSION the way the exporter does: build aside, then rename."""
    staging = repository / ".staging" / f"{name}-{version}-{time.monotonic_ns()}"
    shutil.copytree(source, staging)
    manifest = json.loads((staging / "manifest.json").read_text())
    manifest.update(name=name, version=version)
    (staging / "manifest.json").write_text(json.dumps(manifest))
    if mutate:
        mutate(staging)
    (repository / name).mkdir(parents=True, exist_ok=True)
    target = repository / name / str(version)
    staging.rename(target)
    return target


def infer_request(batch=1, model="m", version=""):
    return v2_request(random_images(batch), model, version)


def stub_for(url, credentials=None, options=()):
    channel = (
        grpc.secure_channel(url, credentials, options)
        if credentials
        else grpc.insecure_channel(url, options)
    )
    return channel, v2_grpc.GRPCInferenceServiceStub(channel)


def wait_for(condition, timeout=30.0, what="condition"):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def served_versions(stub, model="m"):
    try:
        return list(stub.ModelMetadata(v2.ModelMetadataRequest(name=model)).versions)
    except grpc.RpcError:
        return []


def index(stub):
    return {
        (m.name, m.version): (m.state, m.reason)
        for m in stub.RepositoryIndex(v2.RepositoryIndexRequest()).models
    }


def rss_mb(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024


def scrape(server) -> str:
    port = next(
        int(m.group(1))
        for line in server.log
        if (m := re.search(r"metrics on http://127\.0\.0\.1:(\d+)", line))
    )
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        return response.read().decode()


def metric(text: str, name: str, **labels) -> float:
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            found = dict(re.findall(r'(\w+)="([^"]*)"', line.split(" ")[0]))
            if all(found.get(k) == v for k, v in labels.items()):
                return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} {labels} not in metrics")
