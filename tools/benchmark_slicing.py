#!/usr/bin/env python
"""Accuracy, time and memory of sliced inference and TTA:
``d2af benchmark slicing``, same arguments (the code is ``benchmarks/slicing.py``).

    python tools/benchmark_slicing.py --help
"""
import sys

from d2_anchorfree.cli.benchmark import main

if __name__ == "__main__":
    sys.exit(main(suite="slicing"))
