# One-command entry points; each creates or reuses the local virtual environment.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install bytecode run regimes sim-vs-mp test test-fast bench clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@

# The package's bytecode, written once: pip compiles what it installs, but not an editable install's
# sources, and where PYTHONDONTWRITEBYTECODE is set (as on these machines) Python writes none itself,
# so every process would compile asynccorr's sources again on import (~0.05 s of each start-up, and of
# each worker or CLI process the tests start). Up-to-date files are skipped; an edited file's stale
# bytecode is ignored by Python (its source's time stamp differs) until this runs again.
bytecode: install
	$(BIN)/python -m compileall -q asynccorr

install: $(BIN)/.installed

# The main job: every scheme of the default experiment, then its figures.
run: bytecode
	$(BIN)/asynccorr compare --overwrite
	$(BIN)/asynccorr plot results/paper

# The regime study (experiments/regimes.toml): every scheme on the grid of workers x
# learning rate x delay model, 3 seeds; table and heat maps in results/regimes/.
regimes: bytecode
	$(BIN)/asynccorr regimes --config experiments/regimes.toml --jobs 2 --overwrite

# The simulation checked against real worker processes: the same configs on mp and on
# sim calibrated with mp's measured phase times (N = 2, 4, with and without a straggler).
sim-vs-mp: bytecode
	$(BIN)/python -m asynccorr.studies.calibrate --out results/sim-vs-mp

# The whole test suite (slow tests included), inside a network namespace that holds only
# loopback: the Ray cluster and the real backends' tests bind and advertise 127.0.0.1 only.
LOOPBACK := sh tests/loopback.sh
# Two pytest workers (pytest-xdist): the in-process tests are spread over both; the tests that
# start real processes, Ray or a cluster, or time a kill (tests/conftest.py's REAL_MODULES) run
# one after another on one worker, as they would alone.
PARALLEL := -n 2 --dist loadgroup

test: bytecode
	$(LOOPBACK) $(BIN)/python -m pytest -q $(PARALLEL)

# Everything but the tests marked slow.
test-fast: bytecode
	$(LOOPBACK) $(BIN)/python -m pytest -q $(PARALLEL) -m "not slow"

bench: bytecode
	$(BIN)/python benchmarks/bench_env.py
	$(BIN)/python benchmarks/bench_direction.py
	$(BIN)/python benchmarks/bench_phases.py
	$(BIN)/python benchmarks/bench_backends.py
	$(BIN)/python benchmarks/bench_flush.py

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
	find asynccorr -name __pycache__ -type d -prune -exec rm -rf {} +
