"""The serving image and the Kubernetes / KServe manifests, checked offline.

There is no container engine here: the Dockerfile is linted with hadolint, and its exact entrypoint, command,
environment and working directory run in a fresh venv installed from the wheel built from this checkout. The
manifests are validated (core kinds with kubernetes-validate's schemas, KServe and KEDA kinds with the subsets
in deploy/schemas), every kustomize overlay is rendered, and every image tag, port, path and flag they name is
checked against the CLI, the Dockerfile and a real server.
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import requests
import yaml

import bnserve
from bnserve.cli import build_parser
from bnserve.server.settings import settings_from_args
from tests.helpers.serving import publish_copy
from tests.servers import free_port, start_listening
from tests.test_packaging import build_wheel

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
KUBERNETES_VERSION = "1.30.0"
OVERLAYS = sorted(p.parent for p in (DEPLOY / "k8s" / "overlays").glob("*/kustomization.yaml"))


def dockerfile() -> dict:
    """The final stage's instructions: ENTRYPOINT and CMD (JSON form), ENV, USER, WORKDIR, EXPOSE, STOPSIGNAL."""
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    final = re.split(r"^FROM ", text, flags=re.MULTILINE)[-1]
    found: dict = {"env": {}}
    for line in final.splitlines():
        keyword, _, rest = line.strip().partition(" ")
        if keyword in ("ENTRYPOINT", "CMD"):
            found[keyword.lower()] = json.loads(rest)
        elif keyword == "ENV":
            found["env"].update(dict(re.findall(r"(\w+)=(\S+)", rest)))
        elif keyword in ("USER", "WORKDIR", "STOPSIGNAL"):
            found[keyword.lower()] = rest.strip()
        elif keyword == "EXPOSE":
            found["expose"] = sorted(int(p) for p in rest.split())
    return found


def serve_args(args: list[str], repository: Path):
    """Container args parsed by the real CLI into settings, /mnt/models replaced by ``repository``."""
    argv = ["serve", *[str(repository) if a == "/mnt/models" else a for a in args]]
    return settings_from_args(build_parser().parse_args(argv))


def documents(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def rendered(overlay: Path) -> list[dict]:
    kubectl = shutil.which("kubectl")
    assert kubectl, (
        "kubectl (for `kubectl kustomize`) is missing: `make test` installs Debian's package"
    )
    result = subprocess.run([kubectl, "kustomize", str(overlay)], capture_output=True, text=True,
                            timeout=120)  # fmt: skip
    assert result.returncode == 0, result.stderr
    return [d for d in yaml.safe_load_all(result.stdout) if d]


def test_hadolint_passes_the_dockerfile():
    hadolint = Path(sys.executable).parent / "hadolint"
    result = subprocess.run([str(hadolint), str(ROOT / "Dockerfile")], capture_output=True,
                            text=True, timeout=120)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_dockerfile_serves_the_repository_mount_on_its_exposed_ports_as_a_non_root_user(
    tmp_path,
):
    image = dockerfile()
    assert image["entrypoint"] == ["bnserve", "serve"]
    assert image["user"] == "10001" and image["stopsignal"] == "SIGTERM"
    settings = serve_args(image["cmd"], tmp_path)
    assert image["cmd"][image["cmd"].index("--repository") + 1] == "/mnt/models"
    assert image["expose"] == sorted([settings.grpc_port, settings.http_port]) == [8080, 9000]
    assert settings.host == "0.0.0.0"
    assert (
        "tensorflow"
        not in (ROOT / "Dockerfile").read_text().split("FROM")[-1].split("BNSERVE_EXTRAS")[0]
    ), "the core image installs no TensorFlow unless BNSERVE_EXTRAS=tf"


@pytest.mark.parametrize("overlay", OVERLAYS, ids=[o.name for o in OVERLAYS])
def test_every_overlay_renders_and_its_core_kinds_validate(overlay):
    kinds = []
    for document in rendered(overlay):
        kinds.append(document["kind"])
        if document["apiVersion"].startswith("keda.sh/"):
            jsonschema.validate(
                document, json.loads((DEPLOY / "schemas" / "keda-subset.json").read_text())
            )
            continue
        kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)
    assert {"Deployment", "Service", "PodDisruptionBudget"} <= set(kinds), kinds
    assert ("HorizontalPodAutoscaler" in kinds) != ("ScaledObject" in kinds), kinds


def test_the_kserve_manifests_validate_against_the_kept_schema_subset():
    schema = json.loads((DEPLOY / "schemas" / "kserve-subset.json").read_text())
    for path in sorted((DEPLOY / "kserve").glob("*.yaml")):
        for document in documents(path):
            jsonschema.validate(document, schema)
    broken = documents(DEPLOY / "kserve" / "cluster-serving-runtime.yaml")[0]
    broken["spec"]["containers"][0]["livenessProbe"]["httpGet"]["pth"] = "/v2/health/live"
    with pytest.raises(jsonschema.ValidationError):  # a typo cannot pass the subset
        jsonschema.validate(broken, schema)


def containers() -> list[tuple[str, dict, dict]]:
    """(where, container, pod spec or runtime spec) of every manifest that runs bnserve."""
    found = []
    for overlay in OVERLAYS:
        for document in rendered(overlay):
            if document["kind"] == "Deployment":
                pod = document["spec"]["template"]
                found.append((f"overlay {overlay.name}", pod["spec"]["containers"][0], pod))
    for path in sorted((DEPLOY / "kserve").glob("cluster-serving-runtime*.yaml")):
        runtime = documents(path)[0]
        found.append((path.name, runtime["spec"]["containers"][0], runtime))
    return found


def test_every_image_port_path_and_flag_agrees_with_the_cli_and_the_dockerfile(tmp_path):
    image = dockerfile()
    for where, container, owner in containers():
        args = [a.replace("{{.Name}}", "digits") for a in container["args"]]
        settings = serve_args(args, tmp_path)  # every flag and value the real CLI accepts
        assert args[args.index("--repository") + 1] == "/mnt/models", where
        tag = container["image"].rpartition(":")[2]
        backend = settings.backend
        assert tag == bnserve.__version__ + ("-tf" if backend == "tf" else ""), (where, tag)
        ports = {p["containerPort"] for p in container["ports"]}
        assert settings.grpc_port in ports and settings.grpc_port in image["expose"], where
        assert settings.http_port in image["expose"], where
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            get = container[probe]["httpGet"]
            port = get["port"]
            if isinstance(port, str):
                port = next(p["containerPort"] for p in container["ports"] if p["name"] == port)
            assert port == settings.http_port, (where, probe)
        assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
        assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
        security = {
            **owner.get("spec", {}).get("securityContext", {}),
            **container["securityContext"],
        }
        if "runAsUser" in security:
            assert str(security["runAsUser"]) == image["user"], where
        annotations = owner.get("metadata", {}).get("annotations", {}) or owner["spec"].get(
            "annotations", {}
        )
        metrics_port = next(v for k, v in annotations.items() if k.endswith("/port"))
        assert int(metrics_port) == settings.metrics_port, where
        if "terminationGracePeriodSeconds" in owner.get("spec", {}):
            assert owner["spec"]["terminationGracePeriodSeconds"] > (
                settings.drain_seconds + settings.grace_seconds
            ), where
            mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
            assert mounts["/mnt/models"]["readOnly"] is True, where
    runtime = documents(DEPLOY / "kserve" / "cluster-serving-runtime.yaml")[0]
    assert runtime["spec"]["containers"][0]["name"] == "kserve-container"
    assert runtime["spec"]["containers"][0]["ports"][0]["name"] == "h2c"
    assert {"v2", "grpc-v2"} <= set(runtime["spec"]["protocolVersions"])
    assert [f["name"] for f in runtime["spec"]["supportedModelFormats"]] == ["onnx"]
    tf = documents(DEPLOY / "kserve" / "cluster-serving-runtime-tf.yaml")[0]
    assert [f["name"] for f in tf["spec"]["supportedModelFormats"]] == ["tensorflow"]


def fresh_venv(tmp_path: Path) -> tuple[Path, dict]:
    """The wheel of this checkout in a new venv (the image's one install), with this interpreter's
    dependencies behind it, and the image's environment: its ENV, PATH to the venv, nothing of the user's."""
    wheel = build_wheel(tmp_path / "dist")
    venv = tmp_path / "venv"
    subprocess.run(
        [sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120
    )
    subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install",
                    "--quiet", "--no-deps", str(wheel)], check=True, timeout=300)  # fmt: skip
    (site,) = venv.glob("lib/python3*/site-packages")
    env = {
        **dockerfile()["env"],
        "PATH": f"{venv / 'bin'}:/usr/bin:/bin",
        "PYTHONPATH": os.pathsep.join([str(site), *sys.path[1:]]),
    }
    return venv, env


def image_command(args: list[str], repository: Path, grpc_port: int, http_port: int) -> list[str]:
    """ENTRYPOINT + CMD with only the mount point and the two ports replaced (ports: so that tests may run
    beside other servers; the manifests' ports are checked above)."""
    replaced = {"/mnt/models": str(repository), "9000": str(grpc_port), "8080": str(http_port),
                "8082": "0", "{{.Name}}": "digits"}  # fmt: skip
    return dockerfile()["entrypoint"] + [replaced.get(a, a) for a in args]


def test_the_images_command_runs_from_the_wheel_and_stops_cleanly_on_its_stopsignal(
    exported, tmp_path
):
    """The Dockerfile's CMD, then the KServe runtime's args on the layout KServe's storage initializer
    gives for a storageUri naming one model (versions directly under /mnt/models)."""
    _, version_dir, _ = exported
    repository = tmp_path / "models"
    publish_copy(version_dir, repository, "digits", 1)
    venv, env = fresh_venv(tmp_path)
    workdir = tmp_path / "workdir"
    workdir.mkdir()
    runtime = documents(DEPLOY / "kserve" / "cluster-serving-runtime.yaml")[0]
    kserve_args = runtime["spec"]["containers"][0]["args"]
    for args, mount in ((dockerfile()["cmd"], repository), (kserve_args, repository / "digits")):
        grpc_port, http_port = free_port(), free_port()
        command = image_command(args, mount, grpc_port, http_port)
        command[0] = str(venv / "bin" / command[0])
        server = start_listening(command, timeout=180, env=env, cwd=workdir)
        try:
            base = f"http://127.0.0.1:{http_port}"
            for path in ("/v2/health/live", "/v2/health/ready", "/v2/models/digits/ready"):
                assert requests.get(base + path, timeout=10).status_code == 200, path
            body = {"inputs": [{"name": "images", "datatype": "FP32", "shape": [1, 8, 8, 1],
                                "data": [0.0] * 64}]}  # fmt: skip
            assert requests.post(f"{base}/v2/models/digits/infer", json=body, timeout=30).ok
            maps = Path(f"/proc/{server.process.pid}/maps").read_text()
            assert "tensorflow" not in maps, "the ONNX Runtime server loaded TensorFlow"
            server.process.send_signal(getattr(signal, dockerfile()["stopsignal"]))
            assert server.process.wait(timeout=30) == 0
        finally:
            server.stop()
        assert not any(workdir.iterdir()), "the server wrote into its working directory"
