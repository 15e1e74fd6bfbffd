#!/usr/bin/env python
"""Create the bundled tree-crown dataset: ``d2af prepare-data``, same arguments (the code is
``d2_anchorfree/cli/prepare_data.py``).

    python tools/prepare_trees.py --out datasets/trees [--force] [--keep-class-names] ...
"""
import sys

from d2_anchorfree.cli.prepare_data import main

if __name__ == "__main__":
    sys.exit(main())
