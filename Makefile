# Two entry points for a fresh machine: `make demo` and `make test` (each creates .venv when missing).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
export HEPFM_PROGRESS ?= 1

.PHONY: demo test lint clean

$(BIN)/hepfm-installed: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q -e ".[dev,generate,ingest,deepspeed,dask,remote,onnx]"
	touch $@

# The main job on the embedded default: Pythia events -> pretrain -> finetune -> embed -> probe (a few minutes).
DEMO := data/demo
TINY := --set model.preset=tiny --set train.batch_size=128 --set train.val_batches=4 --wandb offline
demo: $(BIN)/hepfm-installed
	$(BIN)/hepfm plugins
	$(BIN)/hepfm generate ttbar_dilepton ttbar_semileptonic qcd_multijet wjets zjets --events 4000 --fast \
		--workers 2 --chunk-events 800 --seed 1 --out $(DEMO)/pretrain.zarr --overwrite
	$(BIN)/hepfm generate ttbar_dilepton --events 16000 --fast --workers 2 --chunk-events 2000 --seed 2 \
		--out $(DEMO)/ttbar_dilepton.zarr --overwrite
	$(BIN)/hepfm inspect $(DEMO)/pretrain.zarr --plots $(DEMO)/plots
	rm -rf $(DEMO)/runs $(DEMO)/latents.zarr
	$(BIN)/hepfm pretrain --data $(DEMO)/pretrain.zarr --out $(DEMO)/runs/pretrain $(TINY) \
		--set train.max_steps=80 --set train.val_every=40
	$(BIN)/hepfm finetune tasks/qe_ttbar.yaml --init $(DEMO)/runs/pretrain --data $(DEMO)/ttbar_dilepton.zarr \
		--out $(DEMO)/runs/qe_ttbar $(TINY) --set train.max_steps=400 --set train.val_every=50
	$(BIN)/hepfm evaluate $(DEMO)/runs/qe_ttbar
	$(BIN)/hepfm embed $(DEMO)/runs/pretrain --data $(DEMO)/pretrain.zarr --out $(DEMO)/latents.zarr --pca 16
	$(BIN)/hepfm probe $(DEMO)/latents.zarr --target process --epochs 20
	@echo "outputs: $(DEMO)/{pretrain,ttbar_dilepton}.zarr, $(DEMO)/plots, $(DEMO)/runs/{pretrain,qe_ttbar}, $(DEMO)/runs/qe_ttbar/eval, $(DEMO)/latents.zarr"

test: $(BIN)/hepfm-installed
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) data
