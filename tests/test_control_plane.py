"""The process and the control plane: exclusive ports, model control modes, metrics access, worker restarts,
TLS files checked before start."""

import errno
import os
import re
import signal
import socket
import time
import urllib.error
import urllib.request

import grpc
import pytest
from tritonclient.grpc import service_pb2 as v2

from bnserve.server.workers import reserve_port
from tests.certs import make_certificates
from tests.helpers.cli import assert_user_error, bnserve
from tests.helpers.serving import (
    index,
    infer_request,
    metric,
    publish_copy,
    served_versions,
    stub_for,
    wait_for,
)
from tests.helpers.serving import scrape as scrape_server
from tests.servers import start_server


def test_a_second_server_on_a_busy_port_stops_with_exit_2(repository):
    server = start_server(repository)
    try:
        result = bnserve("serve", "--repository", repository, "--grpc-port", server.port)
        assert result.returncode == 2
        assert result.stderr.strip().splitlines()[-1] == (
            f"error: --grpc-port {server.port}: port {server.port} is in "
            "use on 127.0.0.1 (or this address cannot be bound)"
        )
        result = bnserve(
            "serve", "--repository", repository, "--grpc-port", server.port, "--workers", "2"
        )
        assert (
            result.returncode == 2
            and f"port {server.port} is in use" in result.stderr.strip().splitlines()[-1]
        )
        channel, stub = stub_for(server.url)
        for _ in range(20):  # every new connection still reaches the one server that holds the port
            assert stub.ModelInfer(infer_request()).model_version == "1"
        channel.close()
    finally:
        assert server.stop() == 0


@pytest.mark.parametrize("mode", ["poll", "none"])
def test_load_and_unload_are_refused_unless_model_control_is_explicit(repository, mode):
    server = start_server(repository, "--model-control", mode)
    channel, stub = stub_for(server.url)
    try:
        for call, message in (
            (stub.RepositoryModelUnload, v2.RepositoryModelUnloadRequest),
            (stub.RepositoryModelLoad, v2.RepositoryModelLoadRequest),
        ):
            with pytest.raises(grpc.RpcError) as caught:
                call(message(model_name="m"))
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
            assert caught.value.details() == (
                f"explicit model load / unload is not allowed: the server runs with "
                f"--model-control {mode} (start it with --model-control explicit to "
                "manage models by RPC)"
            )
        assert served_versions(stub) == ["1"]  # nothing was unloaded
    finally:
        channel.close()
        assert server.stop() == 0


def test_model_control_none_never_follows_the_repository(repository, exported):
    server = start_server(repository, "--model-control", "none", "--poll-seconds", "0.2")
    channel, stub = stub_for(server.url)
    try:
        publish_copy(exported[1], repository, "m", 2)
        time.sleep(1.5)  # several poll intervals: none means none
        assert served_versions(stub) == ["1"] and ("m", "2") not in index(stub)
    finally:
        channel.close()
        assert server.stop() == 0


def scrape(port, token=None):
    request = urllib.request.Request(f"http://127.0.0.1:{port}/metrics")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    return urllib.request.urlopen(request, timeout=10)


def test_metrics_with_a_token_and_on_loopback_by_default(repository, tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text("s3cret\n")
    server = start_server(
        repository,
        "--host",
        "127.0.0.1",
        "--metrics-port",
        "0",
        "--auth-token-file",
        str(token_file),
        "--metrics-auth",
    )
    try:
        port = int(
            re.search(r"metrics on http://127\.0\.0\.1:(\d+)", "\n".join(server.log)).group(1)
        )
        for token in (None, "wrong"):
            with pytest.raises(urllib.error.HTTPError) as caught:
                scrape(port, token)
            assert caught.value.code == 401
        assert "bnserve_loaded_versions" in scrape(port, "s3cret").read().decode()
    finally:
        assert server.stop() == 0
    assert_user_error(
        bnserve("serve", "--repository", repository, "--metrics-port", "0", "--metrics-auth"),
        "--metrics-auth: needs --auth-token-file",
    )


def test_a_dead_worker_is_restarted_and_shutdown_exits_0(repository):
    server = start_server(repository, "--workers", "2")
    try:
        wait_for(
            lambda: sum("listening on" in line for line in server.log) >= 2,
            timeout=60,
            what="two workers",
        )
        pids = [
            int(m)
            for m in re.findall(
                r"started 2 workers on .* \(pids (\d+), (\d+)\)", "\n".join(server.log)
            )[0]
        ]
        os.kill(pids[0], signal.SIGKILL)
        wait_for(
            lambda: any(
                f"worker 0 (pid {pids[0]}) died with exit status -9; restarting it" in line
                for line in server.log
            ),
            timeout=30,
            what="the death logged",
        )
        wait_for(
            lambda: sum("listening on" in line for line in server.log) >= 3,
            timeout=60,
            what="the restart",
        )
        assert any("restarted worker 0" in line for line in server.log)
        channel, stub = stub_for(server.url)
        assert stub.ModelInfer(infer_request()).model_version == "1"
        channel.close()
    finally:
        assert server.stop() == 0
    assert any("all workers stopped (exit codes [0, 0])" in line for line in server.log)


def test_bad_or_mismatched_tls_files_are_one_line_errors(repository, tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first, second = make_certificates(tmp_path / "a"), make_certificates(tmp_path / "b")
    junk = tmp_path / "junk.pem"
    junk.write_text("-----BEGIN PRIVATE KEY-----\nnot base64\n-----END PRIVATE KEY-----\n")
    cases = [
        (
            ["--tls-cert", first.server_cert, "--tls-key", second.server_key],
            "not a PEM certificate chain and the private key that belongs to it",
        ),
        (["--tls-cert", first.server_cert, "--tls-key", junk], "not a PEM certificate chain"),
        (["--tls-cert", junk, "--tls-key", first.server_key], "not a PEM certificate chain"),
        (
            [
                "--tls-cert",
                first.server_cert,
                "--tls-key",
                first.server_key,
                "--tls-client-ca",
                junk,
            ],
            "--tls-client-ca",
        ),
    ]
    for flags, fragment in cases:
        result = bnserve("serve", "--repository", repository, "--grpc-port", "0", *map(str, flags))
        assert_user_error(result, fragment)


def test_bare_connections_are_capped_and_closed_after_the_handshake_time(repository):
    """Sockets that send only the HTTP/2 preface can neither exhaust descriptors nor stay for free."""
    import socket

    server = start_server(
        repository, "--model-control", "none", "--max-connections", "8", "--handshake-seconds", "1"
    )

    def descriptors():
        return len(os.listdir(f"/proc/{server.process.pid}/fd"))

    baseline = descriptors()
    sockets = []
    try:
        for _ in range(40):
            sock = socket.create_connection(("127.0.0.1", server.port))
            sock.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            sockets.append(sock)
        time.sleep(0.3)
        assert descriptors() - baseline <= 8
        wait_for(lambda: descriptors() <= baseline, timeout=10, what="bare connections closed")
        channel, stub = stub_for(server.url)  # a real client is served as before
        assert stub.ModelInfer(infer_request()).model_version == "1"
        channel.close()
    finally:
        for sock in sockets:
            sock.close()
        assert server.stop() == 0


def worker_pids(server) -> list[int]:
    wait_for(
        lambda: sum("listening on" in line for line in server.log) >= 2,
        timeout=60,
        what="two workers",
    )
    found = re.findall(r"started 2 workers on .* \(pids (\d+), (\d+)\)", "\n".join(server.log))
    return [int(pid) for pid in found[0]]


def alive(pid: int) -> bool:
    try:
        state = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def test_a_second_worker_family_cannot_share_the_port(repository, tmp_path):
    """SO_REUSEPORT would let a second --workers family of the same user join the port, and the kernel would
    split connections between two repositories."""
    other = tmp_path / "other"
    other.mkdir()
    publish_copy(repository / "m" / "1", other, "x", 1)
    server = start_server(repository, "--workers", "2", http=True)
    try:
        worker_pids(server)
        for flags in (["--grpc-port", str(server.port)], ["--http-port", str(server.http_port)]):
            result = bnserve("serve", "--repository", other, "--workers", "2", "--grpc-port", "0",
                             "--http-port", "0", *flags)  # fmt: skip
            port = flags[1]
            assert result.returncode == 2, result.stderr
            assert (
                f"{flags[0]} {port}: port {port} is in use"
                in result.stderr.strip().splitlines()[-1]
            )
    finally:
        assert server.stop() == 0


def port_left_in_time_wait() -> int:
    """A free port whose server side of a closed connection sits in TIME_WAIT, as a server that answered and
    closed connections leaves its port for a minute after it stopped."""
    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port)) as client:
            accepted, _ = listener.accept()
            accepted.close()  # the server closes first, so its end goes to TIME_WAIT
            assert client.recv(1) == b""
    # /proc/net/tcp: local address "0100007F:PORT" in hex, state 06 TIME_WAIT (05 FIN_WAIT2 until the
    # client's FIN is in: a bind refuses either)
    rows = [line.split() for line in open("/proc/net/tcp").read().splitlines()[1:]]
    assert any(row[1] == f"0100007F:{port:04X}" and row[3] in ("05", "06") for row in rows)
    return port


def test_workers_restart_on_ports_left_in_time_wait(repository):
    """A restart of --workers on the ports of a server that just stopped: its closed connections keep the
    ports in TIME_WAIT for a minute, which a bind without SO_REUSEADDR refuses ("port in use")."""
    grpc_port, http_port = port_left_in_time_wait(), port_left_in_time_wait()
    server = start_server(
        repository, "--workers", "2", "--grpc-port", str(grpc_port), "--http-port", str(http_port)
    )
    try:
        assert server.port == grpc_port
        worker_pids(server)
        with urllib.request.urlopen(
            f"http://127.0.0.1:{http_port}/v2/health/ready", timeout=10
        ) as answer:
            assert answer.status == 200
    finally:
        assert server.stop() == 0


def test_the_port_reservation_keeps_other_servers_out():
    """The parent holds its ports bound, never listening, until the workers listen: no other server can
    take them meanwhile, one that sets SO_REUSEADDR (as asyncio, gRPC and http.server do) included; and a
    port that a live server listens on is never reserved (the closed-connections fallback excepted)."""
    reservation = reserve_port("127.0.0.1", 0)
    port = reservation.getsockname()[1]
    try:
        with socket.socket() as other:
            other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            with pytest.raises(OSError) as caught:
                other.bind(("127.0.0.1", port))
            assert caught.value.errno == errno.EADDRINUSE
    finally:
        reservation.close()
    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        with pytest.raises(OSError) as caught:
            reserve_port("127.0.0.1", listener.getsockname()[1])
        assert caught.value.errno == errno.EADDRINUSE


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGHUP])
def test_workers_never_outlive_their_parent(repository, signum):
    server = start_server(repository, "--workers", "2", "--grace-seconds", "1")
    pids = worker_pids(server)
    server.process.send_signal(signum)
    wait_for(lambda: not any(alive(pid) for pid in pids), timeout=30, what="the workers to stop")
    code = server.process.wait(timeout=30)
    assert code == (-9 if signum == signal.SIGKILL else 0)
    if signum == signal.SIGHUP:  # a graceful stop, as SIGTERM
        assert any("all workers stopped (exit codes [0, 0])" in line for line in server.log)


def test_workers_metrics_are_the_replicas_total_on_one_port(repository):
    """--workers 2 --metrics-port: the parent's port sums both workers' counters; per-version gauges that
    every worker holds (loaded versions) are the largest worker's, not twice it."""
    server = start_server(repository, "--workers", "2", "--metrics-port", "0")
    try:
        wait_for(lambda: sum("listening on" in line for line in server.log) >= 2, timeout=60,
                 what="two workers")  # fmt: skip
        assert "the sum of the 2 workers" in next(
            line for line in server.log if "metrics on" in line
        )
        pids = re.findall(r"started 2 workers on .* \(pids (\d+), (\d+)\)", "\n".join(server.log))[
            0
        ]
        answered_by = set()
        for _ in range(40):  # new connections: the kernel spreads them over the workers
            channel, stub = stub_for(server.url)
            _, call = stub.ServerMetadata.with_call(v2.ServerMetadataRequest())
            answered_by.add(dict(call.trailing_metadata())["bnserve-worker-pid"])
            stub.ModelInfer(infer_request())
            channel.close()
        text = scrape_server(server)
        assert metric(text, "bnserve_workers_answering") == 2
        assert metric(text, "bnserve_requests_total", model="m", version="1", code="OK") == 40
        assert metric(text, "bnserve_batch_size_count", model="m", version="1") == 40
        assert metric(text, "bnserve_loaded_versions", model="m") == 1
        assert answered_by == set(pids), (answered_by, pids)  # both workers served some
    finally:
        assert server.stop() == 0
