# The two README commands: `make demo` and `make test`. Both create .venv when it is missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test bench check fuzz clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/genfl-server simulate --dataset digits --devices 10 --alpha 0.5 --rounds 10 --strategy fedavg --seed 0 --transport mqtt --out runs/demo

test: $(STAMP)
	$(BIN)/python -m pytest -q -n 2  # two workers: most system tests wait on brokers and processes

bench: $(STAMP)
	$(BIN)/python tools/bench_quant.py --out bench
	$(BIN)/python tools/bench_memory.py --out bench
	$(BIN)/python tools/bench_robust.py --out bench
	$(BIN)/python tools/bench_soak.py --out bench
	$(BIN)/python tools/bench_mqtt.py --out bench
	$(BIN)/python tools/bench_fedavg.py --out bench
	$(BIN)/python tools/bench_learning.py --train-subset 4000 --rounds 10 --jobs 2 --torch-device cpu --out bench \
		--genfl '{"generator_steps": 30, "generator_batch": 64, "soft_labels": true, "distill_steps": 30}'

fuzz: $(STAMP)
	HYPOTHESIS_PROFILE=fuzz $(BIN)/python -m pytest -q tests/protocol/test_fuzz.py

check: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

clean:
	rm -rf runs bench/*.json bench/*.png .pytest_cache
