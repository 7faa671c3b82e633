"""Seeded fuzzing of the two classes the request fuzzer does not reach: what a repository can hold, and
what clients can ask of the control plane."""

import json
import os
import shutil

import grpc
import numpy as np
from tritonclient.grpc import service_pb2 as v2

from tests.helpers.serving import index, infer_request, publish_copy, served_versions, stub_for
from tests.servers import start_server

ODD_NAMES = [
    "a b",
    "tab\tname",
    "-dash",
    ".hidden",
    "ünï",
    "x" * 200,
    "semi;colon",
    "new\nline",
    "..x",
    "ok.name",
]
ODD_VERSIONS = ["01", "+2", " 3", "٤", "5.0", "0", "-6", "7x", "99999999999999999999"]


def corrupt(rng: np.random.Generator, directory, repository, outside) -> str:
    """One random defect in a copied version directory; returns its kind."""
    kind = str(
        rng.choice(
            [
                "fifo",
                "dangling",
                "link-out",
                "junk-manifest",
                "manifest-types",
                "truncate",
                "empty",
                "dir-link",
                "unlisted",
                "huge-size",
                "missing",
                "flip",
            ]
        )
    )
    victim = directory / str(rng.choice(["model.onnx", "golden.npz", "manifest.json"]))
    manifest = directory / "manifest.json"
    if kind == "fifo":
        victim.unlink()
        os.mkfifo(victim)
    elif kind == "dangling":
        victim.unlink()
        victim.symlink_to(directory / "nowhere")
    elif kind == "link-out":
        victim.unlink()
        victim.symlink_to(outside / "model.onnx")
    elif kind == "junk-manifest":
        manifest.write_bytes(rng.bytes(int(rng.integers(0, 200))))
    elif kind == "manifest-types":
        data = json.loads(manifest.read_text())
        key = str(rng.choice(["files", "sizes", "inputs", "outputs", "format"]))
        data[key] = [1, "two", None][int(rng.integers(0, 3))]
        manifest.write_text(json.dumps(data))
    elif kind == "truncate":
        victim.write_bytes(victim.read_bytes()[: int(rng.integers(0, 50))])
    elif kind == "empty":
        for entry in directory.iterdir():
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
    elif kind == "dir-link":
        shutil.rmtree(directory / "saved_model")
        (directory / "saved_model").symlink_to(outside, target_is_directory=True)
    elif kind == "unlisted":
        (directory / "extra.txt").write_text("not in the manifest")
    elif kind == "huge-size":
        data = json.loads(manifest.read_text())
        data["sizes"]["model.onnx"] = 1 << 40
        manifest.write_text(json.dumps(data))
    elif kind == "missing":
        victim.unlink()
    else:
        data = bytearray(victim.read_bytes())
        data[int(rng.integers(0, len(data)))] ^= 0xFF
        victim.write_bytes(bytes(data))
    return kind


def test_fuzzed_repository_entries_never_stop_the_server(exported, tmp_path):
    _, source, _ = exported
    rng = np.random.default_rng(2027)
    repository, outside = tmp_path / "repo", tmp_path / "outside"
    shutil.copytree(source, outside)
    publish_copy(source, repository, "good", 1)
    kinds = {}
    for case in range(36):
        name = f"bad{case}"
        target = publish_copy(source, repository, name, 1)
        kinds[name] = corrupt(rng, target, repository, outside)
    for odd in ODD_NAMES:
        shutil.copytree(source, repository / odd / "1")
    for odd in ODD_VERSIONS:
        shutil.copytree(source, repository / "oddversions" / odd)
    server = start_server(
        repository, "--model-control", "poll", "--poll-seconds", "0.3", timeout=90
    )
    channel, stub = stub_for(server.url)
    try:
        states = index(stub)
        assert served_versions(stub, "good") == ["1"] and stub.ModelInfer(
            infer_request(model="good")
        )
        for name, kind in kinds.items():
            state, reason = states.get((name, "1"), ("absent", ""))
            # Every defect changes what the manifest certifies (or how it can be read): never READY.
            assert state == "UNAVAILABLE" and reason, (name, kind, state)
        assert ("oddversions", "1") not in states and not served_versions(stub, "oddversions")
        assert ("ok.name", "1") in states and states[("ok.name", "1")][0] == "READY"
        # Still polling: a new good version is taken.
        publish_copy(source, repository, "good", 2)
        from tests.test_operations import wait_for

        wait_for(lambda: served_versions(stub, "good") == ["2"], what="good/2 served")
    finally:
        channel.close()
        assert server.stop() == 0
    assert "Traceback" not in "\n".join(server.log)


CONTROL_ALLOWED = {
    grpc.StatusCode.OK,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.INTERNAL,
}


def test_fuzzed_control_plane_calls_get_clean_answers(exported, tmp_path):
    _, source, _ = exported
    repository = tmp_path / "repo"
    publish_copy(source, repository, "m", 1)
    publish_copy(source, repository, "n", 1)
    server = start_server(repository, "--model-control", "explicit")
    channel, stub = stub_for(server.url)
    rng = np.random.default_rng(7)
    names = ["m", "n", "", "absent", "../m", "m/1", "M", "m\n", "ü", "x" * 300]
    versions = ["", "1", "2", "01", "-1", "one", "1e0", "٣"]
    codes = {}
    try:
        for case in range(400):
            name, version = str(rng.choice(names)), str(rng.choice(versions))
            call = int(rng.integers(0, 7))
            try:
                if call == 0:
                    stub.RepositoryModelLoad(v2.RepositoryModelLoadRequest(model_name=name))
                elif call == 1:
                    stub.RepositoryModelUnload(v2.RepositoryModelUnloadRequest(model_name=name))
                elif call == 2:
                    stub.RepositoryIndex(v2.RepositoryIndexRequest(ready=bool(rng.integers(0, 2))))
                elif call == 3:
                    stub.ModelConfig(v2.ModelConfigRequest(name=name, version=version))
                elif call == 4:
                    stub.ModelStatistics(v2.ModelStatisticsRequest(name=name, version=version))
                elif call == 5:
                    stub.ModelMetadata(v2.ModelMetadataRequest(name=name, version=version))
                else:
                    stub.ModelReady(v2.ModelReadyRequest(name=name, version=version))
                code = grpc.StatusCode.OK
            except grpc.RpcError as exc:
                code = exc.code()
                assert code in CONTROL_ALLOWED and exc.details(), (
                    case,
                    call,
                    name,
                    version,
                    code,
                    exc.details(),
                )
                # INTERNAL is what Triton answers when a load finds no loadable version; nothing else may be.
                assert code != grpc.StatusCode.INTERNAL or call == 0, (case, call, exc.details())
            codes[code] = codes.get(code, 0) + 1
        stub.RepositoryModelLoad(v2.RepositoryModelLoadRequest(model_name="m"))
        assert stub.ModelInfer(infer_request()).model_version == "1"
        assert (
            codes.get(grpc.StatusCode.OK, 0) > 50 and codes.get(grpc.StatusCode.NOT_FOUND, 0) > 50
        ), codes
    finally:
        channel.close()
        assert server.stop() == 0
    assert "Traceback" not in "\n".join(server.log)
