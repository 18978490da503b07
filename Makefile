# The two commands a newcomer needs are `make demo` and `make test`; both create the virtual
# environment on first use and are quick on a second run (the install is stamped).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PYTEST_ARGS ?=
MINUTES ?= 30
SEEDS ?= 100000
START ?= 1000000

.PHONY: demo test lint typecheck unit bench soak sweep proto clean

$(STAMP): pyproject.toml constraints.txt
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Corral needs Python 3.11+"'
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev]'
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/corral demo

test: lint typecheck unit

lint: $(STAMP)
	$(BIN)/ruff check corral tests benchmarks
	$(BIN)/ruff format --check --quiet corral tests benchmarks

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/pytest $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python benchmarks/store_bench.py
	$(BIN)/python benchmarks/snapshot_bench.py
	$(BIN)/python benchmarks/kv_bench.py

# The nemesis (kill -9, SIGSTOP, restarts under 8 client processes) for as long as asked.
soak: $(STAMP)
	CORRAL_SOAK_SECONDS=$$(( $(MINUTES) * 60 )) $(BIN)/pytest -s tests/integration/test_nemesis.py -k linearizable

# Simulation seeds beyond the 1,000 of `make test` (about 100,000 an hour on one core; a failure prints
# the command that replays it): `make sweep SEEDS=200000 START=7200000`.
sweep: $(STAMP)
	$(BIN)/python -m corral.sim --seeds $(SEEDS) --start $(START)

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache .hypothesis

# Regenerate the gRPC/protobuf modules from corral/rpc/corral.proto (tests/test_proto.py checks them).
proto: $(STAMP)
	$(BIN)/python -m corral.rpc.generate
