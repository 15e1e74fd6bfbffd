#!/usr/bin/env python
"""Speed, memory and scaling of the detectors next to detectron2's:
``d2af benchmark``, same arguments (the code is ``benchmarks/detectors.py``).

    python tools/benchmark.py --help
"""
import sys

from d2_anchorfree.cli.benchmark import main

if __name__ == "__main__":
    sys.exit(main(suite="detectors"))
