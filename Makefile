# Two commands on a fresh machine: `make train` and `make test` (`make test-fast` to iterate).
# Each builds .venv on first use and reinstalls only when pyproject.toml changes.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
EXPERIMENT ?= experiments/digits/cnn.yaml

.PHONY: train test test-fast test-backbone bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

train: $(STAMP)
	$(BIN)/litlab fit --config $(EXPERIMENT)

test: $(STAMP)
	$(BIN)/python -m pytest -n auto --dist worksteal

# Everything not marked slow (no learning claims, no chains of fits, no subprocess runs): the tier for iteration.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -n auto --dist worksteal -m "not slow"

# The backbone shape and gradient tests on a backbone of your own: make test-backbone BACKBONE=my_nets[:Class]
test-backbone: $(STAMP)
	$(BIN)/python -m pytest tests/models/backbones/test_backbones.py -k registered --backbone=$(BACKBONE)

bench: $(STAMP)
	$(BIN)/python benchmarks/digits.py
	$(BIN)/python benchmarks/augmentation.py
	$(BIN)/python benchmarks/overhead.py
	$(BIN)/python benchmarks/sweep.py

clean:
	rm -rf runs wandb lightning_logs .pytest_cache
