# d2-anchorfree: the two commands of the README.
#   make demo   create the environment if missing, prepare the bundled tree-crown data, train the
#               tiny FCOS on CPU, evaluate COCO AP on val (+ the evaluation report), draw predictions on val
#               images at the best-F1 score threshold of that evaluation.
#   make test   create the environment if missing (and the MMDetection reference environment of the
#               converter's parity tests, tools/setup_mmdet_env.sh), run the whole test suite (all markers;
#               the tests marked openvino in a second pytest process: see pytest.ini).
#   make test-fast   the fast tier, pytest -m "not slow and not mmdet": every component (assigners,
#               losses, heads, geometry, post-processing, config checks): 795 of 905 tests, 97 s at load 0.2-0.9
#               on the 2-core machine (175 s at load 3-4); no MMDetection
#               environment needed. Markers: pytest.ini.
#   make test-d2main   the same suite on detectron2 main (02b5c4e) with its compiled ops, built by
#               tools/setup_d2main.sh from $(D2MAIN_ARCHIVE) (skipped, with the reason, when absent).
# The environment lives in $(D2AF_VENV) (default ~/.cache/d2af/venv), see tools/setup_env.sh.
SHELL := /bin/bash
CONFIG ?= configs/FCOS/FCOS_tiny_R_18_cpu.yaml
OUT ?= output/fcos_tiny
PYTEST_ARGS ?=
D2MAIN_ARCHIVE ?= ../shared/third_party/detectron2-02b5c4e.tar.gz

.PHONY: env data demo test test-fast test-d2main clean

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

# Where CI time goes (.ci/run prints every phase; measured 2026-12-06 on the shared 2-core dev
# machine, at load 5-10 where no load is given, i.e. 3-4x a quiet machine):
#   environment, fresh (tools/setup_env.sh, local wheel mirror)        115 s
#   MMDetection environment, fresh (tools/setup_mmdet_env.sh)           21 s
#   detectron2 main build (tools/setup_d2main.sh, 5 C++ files)         780 s  (186 s quiet)
#   first suite on empty caches, before any test result: the fixtures, made once per machine
#   under ~/.cache/d2af and reused by the second suite (keys checked: export weights by config
#   chain + training options, MMDetection dumps by dumper/shim sources + config + images; neither
#   depends on the detectron2 version, and weights trained on v0.6 load on main):
#     export weights, 7 detectors x 20 iterations (test_export.py)    about 2 min at load 1-1.6
#       (15-16 s each, VFNet 28 s); with the former 50 iterations about 45 min at load 5-10.
#       Side by side at load 3.6-5.6 with OMP_WAIT_POLICY=PASSIVE, 50 -> 20 iterations: FCOS
#       54 -> 27 s, ATSS 56 -> 26, GFL 55 -> 25, VFNet 87 -> 43, DeFCN 58 -> 28, TOOD 66 -> 30,
#       the composition 57 s at 50 (its 20-iteration run was not timed in that run)
#     MMDetection references, 9 dumps (test_mmdet_parity.py)         40-90 s each quiet, made by
#       one process (importing mmdet took 20 s at load 5.5, once instead of 9 times)
#   v0.6 suite with warm caches                                        538 s at load 1.4
#   detectron2 main suite                                              551 s at load 1.4
#   fresh machine at load ~1.5, estimated from these: about 31 min (setup 5.4 min, fixtures
#   7 min, suites 18 min); at load 5-10 everything is 3-4x slower (no such run measured).
# Under load the tests' training processes slow down far more than their CPU share (FCOS: 22 s
# per iteration at load 11; its whole 20-iteration run took 16 s at load 1), so compare only
# timings taken together. Much of that is OpenMP threads spinning while they wait: .ci/run sets
# OMP_WAIT_POLICY=PASSIVE (the same training at load 10: 413 s by default, 108 s with PASSIVE;
# its effect on an idle machine is not measured).
# The main suite runs everything again, on purpose. A subset may only leave out tests whose
# outcome cannot depend on the detectron2 version. Traced with tools/d2_version_exposure.py (every
# detectron2 function that runs in the test process, compared by AST with 02b5c4e's source),
# 297 of 535 tests in checkpoint/,
# data/, layers/, modeling/, tools/ and test_compat.py qualify: losses, the CPU deform conv, key
# renaming, config refusals. Together they take about 7 s quiet (25 s of the loaded run). The
# rest builds detectron2 Boxes/Instances (Boxes.__init__ and Instances.set differ in main) or a
# model (FrozenBatchNorm2d, get_norm, ShapeSpec, Conv2d, ImageList differ), or runs train_net /
# the tools in processes. Per folder, no folder is free of such tests except modeling/losses/
# and layers/ (a few seconds), so no folder is left out.

test: env
	@set -euo pipefail; VENV=$$(bash tools/setup_env.sh 2>/dev/null); \
	D2AF_VENV=$$VENV bash tools/setup_mmdet_env.sh >/dev/null; \
	D2AF_REQUIRE_MMDET=1 $$VENV/bin/python -m pytest -q -m "not openvino" $(PYTEST_ARGS); \
	$$VENV/bin/python -m pytest -q -m openvino $(PYTEST_ARGS) || test $$? -eq 5  # 5: none selected

test-fast: env
	@set -euo pipefail; PY=$$(bash tools/setup_env.sh 2>/dev/null)/bin/python; \
	$$PY -m pytest -q -m "not slow and not mmdet" $(PYTEST_ARGS)

test-d2main: env
	@set -euo pipefail; PY=$$(bash tools/setup_env.sh 2>/dev/null)/bin/python; \
	if [ ! -f "$(D2MAIN_ARCHIVE)" ]; then \
	  echo "[test-d2main] skipped: $(D2MAIN_ARCHIVE) not found (the detectron2 main sources for tests/CI live in ../shared/third_party)"; \
	  exit 0; fi; \
	D2MAIN=$$(D2MAIN_ARCHIVE="$(D2MAIN_ARCHIVE)" bash tools/setup_d2main.sh); \
	echo "[test-d2main] detectron2 main with _C from $$D2MAIN"; \
	D2AF_VENV=$${PY%/bin/python} bash tools/setup_mmdet_env.sh >/dev/null; \
	PYTHONPATH="$$D2MAIN$${PYTHONPATH:+:$$PYTHONPATH}" D2AF_EXPECT_D2MAIN=1 D2AF_REQUIRE_MMDET=1 $$PY -m pytest -q -m "not openvino" $(PYTEST_ARGS); \
	PYTHONPATH="$$D2MAIN$${PYTHONPATH:+:$$PYTHONPATH}" D2AF_EXPECT_D2MAIN=1 $$PY -m pytest -q -m openvino $(PYTEST_ARGS) || test $$? -eq 5

clean:
	rm -rf output
