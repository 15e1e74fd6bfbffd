# d2-anchorfree: the two commands of the README.
#   make demo   create the environment if missing, prepare the bundled tree-crown data, train the
#               tiny FCOS on CPU, evaluate COCO AP on val, draw predictions on val images.
#   make test   create the environment if missing, run the test suite.
# The environment lives in $(D2AF_VENV) (default ~/.cache/d2af/venv), see tools/setup_env.sh.
SHELL := /bin/bash
CONFIG ?= configs/FCOS/FCOS_tiny_R_18_cpu.yaml
OUT ?= output/fcos_tiny
PYTEST_ARGS ?=

.PHONY: env data demo test clean

env:
	@bash tools/setup_env.sh >/dev/null

data: env
	@PY=$$(bash tools/setup_env.sh 2>/dev/null)/bin/python; $$PY tools/prepare_trees.py --out datasets/trees

demo: data
	@set -euo pipefail; PY=$$(bash tools/setup_env.sh 2>/dev/null)/bin/python; \
	echo "== untrained model (reference AP)"; \
	$$PY train_net.py --config-file $(CONFIG) --eval-only --allow-untrained MODEL.WEIGHTS "" OUTPUT_DIR $(OUT)/untrained \
	  2>&1 | grep -A 3 "Evaluation results for bbox" || echo "(untrained model: no detection above the score threshold)"; \
	echo "== training $(CONFIG) (CPU, about ten minutes)"; \
	start=$$(date +%s); \
	$$PY train_net.py --config-file $(CONFIG) OUTPUT_DIR $(OUT) 2>&1 | tee $(OUT).log | grep -E "eta:|Evaluation results|^\|" ; \
	echo "== training + evaluation took $$(( $$(date +%s) - start )) s (log: $(OUT).log)"; \
	echo "== drawing predictions on val images"; \
	$$PY tools/predict.py --config-file $(CONFIG) --input trees_val \
	  --output $(OUT)/predictions MODEL.WEIGHTS $(OUT)/model_final.pth

test: env
	@PY=$$(bash tools/setup_env.sh 2>/dev/null)/bin/python; $$PY -m pytest -q $(PYTEST_ARGS)

clean:
	rm -rf output
