#!/usr/bin/env python
"""CPU latency of exported inference (eager PyTorch, onnxruntime, TorchScript):
``d2af benchmark export``, same arguments (the code is ``benchmarks/export.py``).

    python tools/benchmark_export.py --help
"""
import sys

from d2_anchorfree.cli.benchmark import main

if __name__ == "__main__":
    sys.exit(main(suite="export"))
