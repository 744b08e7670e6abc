# Modelsmith: `make run` starts ComfyUI with the pack, `make test` runs the tests.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
COMFY = $(if $(COMFYUI_PATH),$(COMFYUI_PATH),$(CURDIR)/.comfyui)
HAS_GPU = $(shell $(PY) -c "import torch;print(int(torch.cuda.is_available()))" 2>/dev/null)
PORT ?= 8188

.PHONY: setup run test bench clean

setup:
	@bash scripts/setup.sh

run: setup
	cd "$(COMFY)" && exec $(CURDIR)/$(PY) main.py --listen 127.0.0.1 --port $(PORT) $(if $(filter 1,$(HAS_GPU)),,--cpu)

test: setup
	$(VENV)/bin/pytest -q tests $(PYTEST_ARGS)

bench: setup
	@for b in benchmarks/*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) .comfyui .cache tests/artifacts
