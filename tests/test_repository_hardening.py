"""Whatever a file system can hold in the repository, the server starts, serves the good versions, keeps
polling and stops on time; a bad entry is refused with its reason, per model and per version."""

import json
import os
import shutil
import time

import pytest

from bnserve.core.repository import MAX_MANIFEST_BYTES, version_dirs
from tests.helpers.serving import (
    POLL,
    index,
    infer_request,
    publish_copy,
    served_versions,
    stub_for,
    wait_for,
)
from tests.onnx_models import projection_model
from tests.servers import start_server


def bad_entries(repository, source, outside):
    """{(model, version): fragment of the expected refusal}: one of each kind of bad repository entry."""
    expected = {}
    publish_copy(source, repository, "a b", 1)
    expected[("a b", "")] = "not a valid model name"

    def extra(name, make):
        def mutate(directory):
            make(directory / name)

        return mutate

    publish_copy(
        source,
        repository,
        "dangling",
        1,
        mutate=extra("extra.bin", lambda p: p.symlink_to("/nonexistent/x")),
    )
    expected[("dangling", "1")] = "'extra.bin' is a dangling or looping symbolic link"
    publish_copy(source, repository, "fifo", 1, mutate=extra("extra.bin", os.mkfifo))
    expected[("fifo", "1")] = "'extra.bin' is not a regular file (a FIFO)"

    def fifo_manifest(directory):
        (directory / "manifest.json").unlink()
        os.mkfifo(directory / "manifest.json")

    publish_copy(source, repository, "fifomanifest", 1, mutate=fifo_manifest)
    expected[("fifomanifest", "1")] = "'manifest.json' is not a regular file (a FIFO)"

    def device_model(directory):
        (directory / "model.onnx").unlink()
        (directory / "model.onnx").symlink_to("/dev/zero")

    publish_copy(source, repository, "device", 1, mutate=device_model)
    expected[("device", "1")] = (
        "'model.onnx' is a link leading outside the repository (to '/dev/zero')"
    )

    def endless_inside(directory):
        # A link that stays inside the repository, to a FIFO: a reader opening it would wait forever.
        os.mkfifo(repository / ".endless")
        (directory / "model.onnx").unlink()
        (directory / "model.onnx").symlink_to(repository / ".endless")

    publish_copy(source, repository, "endless", 1, mutate=endless_inside)
    expected[("endless", "1")] = "'model.onnx' is not a regular file (a FIFO)"
    shutil.copytree(source, outside / "1")
    (repository / "escape").mkdir()
    (repository / "escape" / "1").symlink_to(outside / "1", target_is_directory=True)
    expected[("escape", "1")] = "the version directory leads outside the repository"

    def huge_manifest(directory):
        manifest = json.loads((directory / "manifest.json").read_text())
        manifest["padding"] = "x" * (MAX_MANIFEST_BYTES + 1)
        (directory / "manifest.json").write_text(json.dumps(manifest))

    publish_copy(source, repository, "hugemanifest", 1, mutate=huge_manifest)
    expected[("hugemanifest", "1")] = f"more than the {MAX_MANIFEST_BYTES} allowed"
    for odd in ("01", " 1", "+1", "\u0661"):  # not versions: ignored, never served as version 1
        shutil.copytree(source, repository / "odd" / odd)
    publish_copy(source, repository, "odd", 2)
    return expected


def test_every_bad_entry_is_refused_with_its_reason_and_the_rest_serves(exported, tmp_path):
    _, source, _ = exported
    repository, outside = tmp_path / "repo", tmp_path / "outside"
    outside.mkdir()
    publish_copy(source, repository, "m", 1)
    expected = bad_entries(repository, source, outside)
    server = start_server(
        repository, "--poll-seconds", POLL, timeout=60
    )  # starts at all: nothing blocked the scan
    channel, stub = stub_for(server.url)
    try:
        states = index(stub)
        for key, fragment in expected.items():
            assert key in states and states[key][0] == "UNAVAILABLE", (key, states.get(key))
            assert fragment in states[key][1], (key, states[key][1])
        assert (
            served_versions(stub) == ["1"] and stub.ModelInfer(infer_request()).model_version == "1"
        )
        assert served_versions(stub, "odd") == ["2"] and sorted(
            v for (m, v) in states if m == "odd"
        ) == ["2"]
        # Polling goes on over the bad entries: a new version elsewhere is picked up, a new bad entry refused.
        publish_copy(source, repository, "m", 2)
        publish_copy(source, repository, "later", 1, mutate=lambda d: os.mkfifo(d / "extra.bin"))
        wait_for(lambda: served_versions(stub) == ["2"], what="m/2 served past the bad entries")
        wait_for(
            lambda: index(stub).get(("later", "1"), ("",))[0] == "UNAVAILABLE",
            what="later/1 refused",
        )
    finally:
        channel.close()
        stopping = time.monotonic()
        assert server.stop(timeout=30) == 0
    assert (
        time.monotonic() - stopping < 15
    )  # the 5 s grace and a little: nothing the repository holds blocks it
    log = "\n".join(server.log)
    assert "ignored repository entry 'a b': not a valid model name" in log
    assert "Traceback" not in log, log[-3000:]


def test_the_repository_scan_reads_no_special_file(tmp_path):
    """version_dirs ignores non-canonical names; nothing in a scan opens a FIFO (it would block forever)."""
    from bnserve.server.repository_scan import scan_repository

    model = tmp_path / "m"
    for name in ("1", "01", "+1", " 1", "\u0661", "x"):
        (model / name).mkdir(parents=True)
    os.mkfifo(model / "1" / "manifest.json")
    assert list(version_dirs(model)) == [1]
    scan = scan_repository(tmp_path)
    assert scan.models["m"][1].problem == "'manifest.json' is not a regular file (a FIFO)"


def flip_model_byte(directory):
    path = directory / "model.onnx"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def test_a_version_rewritten_in_place_is_verified_again(exported, tmp_path):
    _, source, _ = exported
    repository = tmp_path / "repo"
    publish_copy(source, repository, "m", 1)
    publish_copy(source, repository, "m", 2)
    server = start_server(repository, "--poll-seconds", POLL)
    channel, stub = stub_for(server.url)
    try:
        assert served_versions(stub) == ["2"]
        flip_model_byte(repository / "m" / "2")  # the immutable version changes under the server
        wait_for(
            lambda: index(stub)[("m", "2")][0] == "UNAVAILABLE", what="rewritten version refused"
        )
        reason = index(stub)[("m", "2")][1]
        assert (
            reason.startswith("changed on disk after it was loaded, no longer served: ")
            and "sha256" in reason
        )
        wait_for(lambda: served_versions(stub) == ["1"], what="fallback to version 1")
        assert stub.ModelInfer(infer_request()).model_version == "1"
        flip_model_byte(
            repository / "m" / "2"
        )  # flipped back: the same bytes as certified, served again
        wait_for(lambda: served_versions(stub) == ["2"], what="version 2 restored")
    finally:
        channel.close()
        assert server.stop() == 0
    log = "\n".join(server.log)
    assert (
        "model 'm' version 2 changed on disk after it was loaded (versions are immutable): verifying it again"
        in log
    )


def test_a_request_for_a_non_canonical_version_is_not_found(exported, tmp_path):
    import grpc

    _, source, _ = exported
    repository = tmp_path / "repo"
    publish_copy(source, repository, "m", 1)
    server = start_server(repository, "--poll-seconds", "0")
    channel, stub = stub_for(server.url)
    try:
        assert stub.ModelInfer(infer_request(version="1")).model_version == "1"
        for version in ("01", " 1", "+1", "\u0661", "1.0", "0", "-1", "1\n"):
            with pytest.raises(grpc.RpcError) as caught:
                stub.ModelInfer(infer_request(version=version))
            assert caught.value.code() == grpc.StatusCode.NOT_FOUND, version
            assert caught.value.details() == (
                f"model 'm' version {version!r} not found: versions are canonical "
                "positive decimal integers (1, 2, ...)"
            ), caught.value.details()
    finally:
        channel.close()
        assert server.stop() == 0


def substitute(input_shape, slice_rows=False):
    """Replace model.onnx by another valid model and make the manifest's hashes match (no golden samples)."""
    from tests.test_parity_at_load import rehash, without_golden

    def mutate(directory):
        projection_model(directory / "model.onnx", input_shape, slice_rows)
        without_golden(directory)
        rehash(directory)

    return mutate


def declare_fp16(directory):
    from tests.test_parity_at_load import rehash

    manifest = json.loads((directory / "manifest.json").read_text())
    manifest["inputs"][0]["datatype"] = "FP16"
    (directory / "manifest.json").write_text(json.dumps(manifest))
    rehash(directory)


def test_a_version_serves_what_it_declares_or_is_refused(exported, tmp_path):
    import grpc

    _, source, _ = exported
    repository = tmp_path / "repo"
    publish_copy(source, repository, "good", 1)
    publish_copy(source, repository, "other", 1, mutate=substitute([3, 5]))
    publish_copy(source, repository, "fp16", 1, mutate=declare_fp16)
    publish_copy(
        source, repository, "rowless", 1, mutate=substitute([-1, 8, 8, 1], slice_rows=True)
    )
    server = start_server(repository, "--model-control", "none")
    channel, stub = stub_for(server.url)
    try:
        states = index(stub)
        assert states[("other", "1")] == (
            "UNAVAILABLE",
            "model.onnx input 'images' has shape [3, 5], the manifest declares [-1, 8, 8, 1]",
        )
        assert states[("fp16", "1")] == (
            "UNAVAILABLE",
            "manifest: 'images' is declared FP16; this server serves FP32 tensors only",
        )
        # Its declared shapes match and one row gives one row, so it loads (unverified: no golden samples);
        # every batch of more rows fails whole instead of being split wrongly.
        assert states[("rowless", "1")][0] == "READY" and states[("good", "1")][0] == "READY"
        for rows in (2, 5):
            with pytest.raises(grpc.RpcError) as caught:
                stub.ModelInfer(infer_request(batch=rows, model="rowless"))
            assert caught.value.code() == grpc.StatusCode.INTERNAL
            assert caught.value.details() == (
                f"the model returned 1 rows of output 'logits' for a batch of {rows} "
                "input rows; the batch failed"
            )
        assert stub.ModelInfer(infer_request(model="good", batch=3)).model_version == "1"
    finally:
        channel.close()
        assert server.stop() == 0
