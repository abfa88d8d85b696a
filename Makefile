# The two commands a newcomer needs: `make demo` and `make test` (see README.md).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DATA ?= data/parts
STAMP := $(VENV)/.installed

.PHONY: demo test test-gpu install lock lint docs dataset bench mutation clean

install: $(STAMP)

# (Re)install when the dependency declaration changes. uv (from PyPI, into the venv) installs the
# dependencies: it links them from its cache, where pip unpacks the ~7 GB of torch's CUDA wheels on
# every fresh clone. --compile-bytecode as pip does: where PYTHONDONTWRITEBYTECODE is set, nothing
# would ever be compiled and every process (each test's CLI run, each DDP rank) would pay ~15 s.
# requirements.lock pins every package (and its version) the demo's published numbers were made with.
$(STAMP): setup.cfg setup.py pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet uv
	$(BIN)/uv pip install --quiet --compile-bytecode --python $(BIN)/python -c requirements.lock -e ".[dev]"
	touch $(STAMP)

# Refresh the lock to the newest releases setup.cfg allows; then rerun `make demo SEEDS=0,1,2` and
# update the README's table, which was made under the lock.
lock:
	test -x $(BIN)/uv || ($(PYTHON) -m venv $(VENV) && $(BIN)/python -m pip install --quiet uv)
	$(BIN)/uv pip compile setup.cfg --extra dev --upgrade --python $(BIN)/python --custom-compile-command "make lock" -o requirements.lock

dataset: $(STAMP)
	test -f $(DATA)/images.txt || $(BIN)/proto-lightning make-dataset --out $(DATA) --classes 10 --per-class 100 --train-fraction 0.6 --size 96 --seed 0

# SEEDS=0,1,2: the demo once per seed (a Hydra multirun), then `compare` over the runs
demo: dataset
	$(BIN)/proto-lightning demo data.root=$(DATA) $(if $(SEEDS),-m seed=$(SEEDS))

# pytest exits 5 when it collects no test; make treats every non-zero exit as a failure.
test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check proto_lightning tests benchmarks experiments
	$(BIN)/ruff format --check proto_lightning tests benchmarks experiments
	$(BIN)/hadolint docker/Dockerfile

# The documentation site (mkdocs-material, mkdocstrings) into site/, strictly: a broken link, a missing
# page or a failed API reference fails; offline (no fonts or plugins fetch anything).
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet

# On a machine with a CUDA device: the tests marked `gpu` (decompose, projection, ProtoPNet's push,
# evaluate on the device) and the GPU benchmark of the streaming decompose, in one command.
test-gpu: $(STAMP)
	$(BIN)/python -m pytest -q -m gpu
	$(BIN)/python benchmarks/decompose_scale.py --device cuda

# Every benchmark, one table of ratios at the end (BENCH_ARGS=--quick for the CI-sized run).
bench: $(STAMP)
	$(BIN)/python benchmarks/run_all.py $(BENCH_ARGS)

# Mutation testing of the numeric core (tests/mutate.py); about 20 min on 2 cores, not part of CI.
mutation: $(STAMP)
	$(BIN)/python -m tests.mutate $(MUTATION_ARGS)

clean:
	rm -rf runs outputs multirun .pytest_cache site
