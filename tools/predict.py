#!/usr/bin/env python
"""Run a trained detector on images, a folder, a glob or a registered dataset: ``d2af predict``, same arguments
(the code is ``d2_anchorfree/cli/predict.py``).

    python tools/predict.py --help
"""
import sys

from d2_anchorfree.cli.predict import main

if __name__ == "__main__":
    sys.exit(main())
