#!/usr/bin/env python
"""COCO bbox evaluation: pycocotools vs faster-coco-eval vs detectron2's C++ COCOeval:
``d2af benchmark cocoeval``, same arguments (the code is ``benchmarks/cocoeval.py``).

    python tools/benchmark_cocoeval.py --help
"""
import sys

from d2_anchorfree.cli.benchmark import main

if __name__ == "__main__":
    sys.exit(main(suite="cocoeval"))
