# Every target installs what it needs: a fresh clone needs nothing but python3 (>= 3.11).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
RUN_DIR ?= runs/digits
EPOCHS ?= 15
REPOSITORY ?= models
MODEL ?= digits
PORT ?= 8500
HTTP_PORT ?= 8501

.PHONY: install run test bench protos format clean

$(INSTALLED): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "error: bnserve needs Python >= 3.11, $(PYTHON) is " + sys.version.split()[0] + " (make PYTHON=python3.11 ...)")'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

install: $(INSTALLED)

# Train the default digits model unless a completed run is there (an interrupted one is resumed),
# export it unless the repository already holds a version of it, then serve in the foreground.
run: $(INSTALLED)
	@if grep -q '"status": "completed"' $(RUN_DIR)/run.json 2>/dev/null; then \
		echo "using the completed run in $(RUN_DIR)"; \
	elif [ -f $(RUN_DIR)/run.json ]; then \
		$(VENV)/bin/bnserve train --out $(RUN_DIR) --resume --epochs $(EPOCHS); \
	else \
		$(VENV)/bin/bnserve train --out $(RUN_DIR) --epochs $(EPOCHS); \
	fi
	@if ls -d $(REPOSITORY)/$(MODEL)/[1-9]* >/dev/null 2>&1; then \
		echo "$(REPOSITORY)/$(MODEL) already holds a version"; \
	else \
		$(VENV)/bin/bnserve export $(RUN_DIR) --repository $(REPOSITORY) --name $(MODEL); \
	fi
	@$(PY) -c "import numpy as np; from bnserve.trainer.data import load_dataset; np.save('$(RUN_DIR)/sample.npy', load_dataset('digits').images[:4])"
	@echo "serving $(REPOSITORY) on 127.0.0.1:$(PORT) (gRPC) and 127.0.0.1:$(HTTP_PORT) (HTTP); from another shell:"
	@echo "    $(VENV)/bin/bnserve predict --url 127.0.0.1:$(PORT) --model $(MODEL) $(RUN_DIR)/sample.npy"
	@echo "    curl 127.0.0.1:$(HTTP_PORT)/v2/models/$(MODEL)"
	$(VENV)/bin/bnserve serve --repository $(REPOSITORY) --host 127.0.0.1 --grpc-port $(PORT) --http-port $(HTTP_PORT)

# The formatter and its lint first (ruff, settings in pyproject.toml; `make format` applies them), then the
# tests. Debian's chromium renders the status page in tests/test_status_page.py, and kubectl renders the
# kustomize overlays in tests/test_deploy.py (each installed here when missing).
test: $(INSTALLED)
	$(PY) -m ruff format --check --quiet .
	$(PY) -m ruff check --quiet .
	@command -v chromium >/dev/null || apt-get install -y -qq chromium >/dev/null 2>&1 \
		|| (apt-get update -qq && apt-get install -y -qq chromium >/dev/null) || sudo apt-get install -y -qq chromium >/dev/null \
		|| echo "warning: could not install Debian's chromium; tests/test_status_page.py will fail"
	@command -v kubectl >/dev/null || apt-get install -y -qq kubernetes-client >/dev/null 2>&1 \
		|| (apt-get update -qq && apt-get install -y -qq kubernetes-client >/dev/null) \
		|| echo "warning: could not install kubectl; tests/test_deploy.py cannot render the kustomize overlays"
	$(PY) -m pytest -q

# Needs Debian's h2load (nghttp2-client) as the load generator and valgrind (callgrind) to count instructions;
# installed here when missing.
bench: $(INSTALLED)
	command -v h2load >/dev/null || (apt-get install -y nghttp2-client || (apt-get update && apt-get install -y nghttp2-client)) \
		|| sudo apt-get install -y nghttp2-client
	command -v valgrind >/dev/null || (apt-get install -y valgrind || (apt-get update && apt-get install -y valgrind)) \
		|| sudo apt-get install -y valgrind
	$(PY) -m pip install --quiet -e '.[bench,test]'
	$(PY) bench/warmup_study.py --out docs/warmup.md
	$(PY) bench/run.py
	$(PY) bench/http_run.py
	$(PY) bench/drift_study.py
	$(PY) bench/own_models.py
	$(PY) bench/image_bytes.py
	$(PY) bench/queue_depth.py
	$(PY) bench/tracing_cost.py
	$(PY) bench/compute_bound.py
	$(PY) bench/io_binding.py
	$(PY) bench/instructions.py

# Regenerate protos/*_pb2*.py from protos/*.proto (tests/test_protos.py fails when they are stale). protoc
# sees protos/ as bnserve/protos/ (a link in build/), so the generated imports name the installed package.
PROTOS := inference.proto:grpc tfserving.proto: monitor.proto:grpc
protos: $(INSTALLED)
	rm -rf build/protoc && mkdir -p build/protoc/bnserve && ln -s ../../../protos build/protoc/bnserve/protos
	for entry in $(PROTOS); do proto=$${entry%%:*}; grpc=$${entry#*:}; \
		$(PY) -m grpc_tools.protoc -Ibuild/protoc --python_out=build/protoc --pyi_out=build/protoc \
			$${grpc:+--grpc_python_out=build/protoc} bnserve/protos/$$proto || exit 1; done
	rm -rf build/protoc

format: $(INSTALLED)
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

clean:
	rm -rf $(VENV) runs build *.egg-info
