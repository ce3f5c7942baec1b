# The two README commands: `make demo` and `make test`. Both create .venv when it is missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_STAMP := $(VENV)/.installed-demo

.PHONY: demo test test-fast bench check fuzz clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# The demo needs only the package and what the digits demo uses (no test tools, no diffusion models).
$(DEMO_STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e '.[demo]'
	touch $(DEMO_STAMP)

# GenFL and FedAvg on the same strongly non-IID split (2 digit classes per device), each over MQTT with ten
# agent processes and an embedded broker; both curves in runs/demo/curve.png, and a one-line verdict.
demo: $(DEMO_STAMP)
	$(BIN)/genfl-server simulate --dataset digits --devices 10 --partition shards --classes-per-device 2 \
		--rounds 10 --seed 0 --strategy genfl --compare fedavg --transport mqtt --out runs/demo

test: $(STAMP)
	$(BIN)/python -m pytest -q -n 3  # three workers on two cores: the system tests spend much of their time waiting on brokers and processes

test-fast: $(STAMP)  # the inner loop: unit tests only (no brokers, processes or whole simulations)
	$(BIN)/python -m pytest -q -n 2 -m "not slow"

bench: $(STAMP)
	$(BIN)/python tools/bench_quant.py --out bench
	$(BIN)/python tools/bench_memory.py --out bench
	$(BIN)/python tools/bench_robust.py --out bench
	$(BIN)/python tools/bench_soak.py --out bench
	$(BIN)/python tools/bench_fedavg.py --out bench
	$(BIN)/python tools/bench_sim.py --out bench
	$(BIN)/python tools/bench_cluster.py --out bench
	$(BIN)/python tools/bench_privacy.py --out bench   # secure aggregation's arithmetic
	$(BIN)/python tools/bench_privacy.py --part mqtt --out bench   # and its rounds over Mosquitto
	$(BIN)/python tools/bench_privacy.py --part utility --out bench   # accuracy against epsilon (15 minutes)
	$(BIN)/python tools/bench_releases.py --out bench
	$(BIN)/python tools/deploy_walkthrough.py --out bench/deploy-walkthrough.json  # docs/deploy.md, step by step (as root)
	$(BIN)/python tools/bench_learning.py --preset digits --out bench
	$(BIN)/python tools/bench_learning.py --preset cpu --out bench   # about 70 minutes on 2 cores
	$(BIN)/python tools/bench_learning.py --preset cpu-pool --out bench   # GenFL from pools: about 4 hours on 2 cores
	# on a GPU box: $(BIN)/python tools/bench_learning.py --preset gpu --out bench (and --preset gpu-pool)

fuzz: $(STAMP)
	HYPOTHESIS_PROFILE=fuzz $(BIN)/python -m pytest -q tests/protocol/test_fuzz.py

check: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

clean:
	rm -rf runs bench/*.json bench/*.png .pytest_cache
