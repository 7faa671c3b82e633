import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def digits_run(tmp_path_factory):
    """The default model trained on digits with the default settings (the `make run` model)."""
    from bnserve.trainer.config import TrainConfig
    from bnserve.trainer.train import train

    run_dir = tmp_path_factory.mktemp("runs") / "digits"
    record = train(TrainConfig(), run_dir)
    return run_dir, record


@pytest.fixture(scope="session")
def reference(digits_run):
    """The unfolded trained model in inference mode, and the held-out images."""
    from bnserve.trainer.checkpoint import restore_trained_model
    from bnserve.trainer.data import load_dataset, split

    run_dir, record = digits_run
    model, _, _ = restore_trained_model(run_dir)
    config = record.config
    _, heldout = split(load_dataset("digits"), config["seed"], config["heldout_fraction"])
    return model, heldout


@pytest.fixture(scope="session")
def exported(digits_run, tmp_path_factory):
    """The default digits run exported as version 1 of model "digits": (repository, version dir, manifest)."""
    from bnserve.exporter.export import ExportRequest, export

    run_dir, _ = digits_run
    repository = tmp_path_factory.mktemp("repository")
    version, path, manifest = export(
        ExportRequest(run_dir, repository, "digits"), log=lambda line: None
    )
    assert version == 1 and manifest.name == "digits" and manifest.version == 1
    # The tests read the file format itself: manifest.json as JSON.
    return repository, path, json.loads((path / "manifest.json").read_text())


@pytest.fixture(scope="session")
def serving_repository(exported, tmp_path_factory):
    """digits/1 (good), digits/2 (one byte of model.onnx changed) and other/1 (good)."""
    import shutil

    _, version_dir, _ = exported
    repository = tmp_path_factory.mktemp("serving")
    shutil.copytree(version_dir, repository / "digits" / "1")
    shutil.copytree(version_dir, repository / "digits" / "2")
    shutil.copytree(version_dir, repository / "other" / "1")
    tampered = repository / "digits" / "2" / "model.onnx"
    data = bytearray(tampered.read_bytes())
    data[len(data) // 3] ^= 0x01
    tampered.write_bytes(bytes(data))
    return repository


@pytest.fixture(scope="session", params=["onnx", "tf"])
def server(request, serving_repository):
    from tests.servers import start_server

    process = start_server(
        serving_repository, "--backend", request.param, "--model-control", "explicit"
    )
    process.backend = request.param
    yield process
    assert process.stop() == 0, "\n".join(process.log)


@pytest.fixture
def repository(exported, tmp_path):
    """A repository holding m/1, a copy of the exported digits version."""
    from tests.helpers.serving import publish_copy

    _, version_dir, _ = exported
    repository = tmp_path / "repo"
    repository.mkdir()
    publish_copy(version_dir, repository, "m", 1)
    return repository


@pytest.fixture
def source(exported):
    """The exported digits version directory."""
    return exported[1]
