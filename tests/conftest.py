import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def digits_run(tmp_path_factory):
    """The default model trained on digits with the default settings (the `make run` model)."""
    from trainer.config import TrainConfig
    from trainer.train import train

    run_dir = tmp_path_factory.mktemp("runs") / "digits"
    record = train(TrainConfig(), run_dir)
    return run_dir, record


@pytest.fixture(scope="session")
def exported(digits_run, tmp_path_factory):
    """The default digits run exported as version 1 of model "digits": (repository, version dir, manifest)."""
    from exporter.export import ExportRequest, export

    run_dir, _ = digits_run
    repository = tmp_path_factory.mktemp("repository")
    version, path, manifest = export(ExportRequest(run_dir, repository, "digits"), log=lambda line: None)
    assert version == 1
    return repository, path, manifest
