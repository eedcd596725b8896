# Two entry points for a fresh machine: `make demo` and `make test` (each creates .venv when missing).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
export HEPFM_PROGRESS ?= 1

.PHONY: demo test lint clean

$(BIN)/hepfm-installed: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q -e ".[dev,generate,ingest]"
	touch $@

demo: $(BIN)/hepfm-installed
	$(BIN)/hepfm plugins
	$(BIN)/hepfm generate toy_signal=0.5 toy_background=0.5 --events 20000 --seed 1 --out data/demo.zarr --overwrite
	$(BIN)/hepfm inspect data/demo.zarr --plots data/demo_plots
	$(BIN)/hepfm validate tasks/*.yaml

test: $(BIN)/hepfm-installed
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) data
