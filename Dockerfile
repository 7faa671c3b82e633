# bnserve's serving image: the serving core (ONNX Runtime, gRPC + HTTP, no TensorFlow), built from this
# checkout. `docker build --build-arg BNSERVE_EXTRAS=tf -t bnserve:0.1.0-tf .` adds TensorFlow for
# `--backend tf` (SavedModel serving). tests/test_deploy.py lints this file with hadolint and runs its
# entrypoint, user, paths and environment in a fresh venv installed from the same wheel.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS wheel
WORKDIR /src
COPY pyproject.toml README.md ./
COPY bnserve bnserve
COPY server server
COPY exporter exporter
COPY trainer trainer
COPY protos protos
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /dist .

FROM ${PYTHON_IMAGE}
ARG BNSERVE_EXTRAS=""
# Bytecode is compiled at install; the models come from the read-only volume at /mnt/models (a KServe
# storage initializer's target, or a PersistentVolume), and nothing is written beside them.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp
COPY --from=wheel /dist /dist
# DL3013 asks for pinned versions: the one package named here is this checkout's own wheel, and its
# dependencies carry the compatible ranges of pyproject.toml.
# hadolint ignore=DL3013
RUN wheel="$(ls /dist/bnserve-*.whl)" \
    && pip install --no-cache-dir "${wheel}${BNSERVE_EXTRAS:+[${BNSERVE_EXTRAS}]}" \
    && rm -rf /dist \
    && useradd --uid 10001 --no-create-home --home-dir /tmp --shell /usr/sbin/nologin bnserve
USER 10001
WORKDIR /tmp
EXPOSE 9000 8080
# SIGTERM starts the drain: readiness false at once, new requests served for --drain-seconds, then
# --grace-seconds for what is in flight. Kubernetes waits terminationGracePeriodSeconds (deploy/: 30,
# above 5 + 20) before SIGKILL.
STOPSIGNAL SIGTERM
ENTRYPOINT ["bnserve", "serve"]
CMD ["--repository", "/mnt/models", "--host", "0.0.0.0", "--grpc-port", "9000", "--http-port", "8080", "--drain-seconds", "5", "--grace-seconds", "20"]
