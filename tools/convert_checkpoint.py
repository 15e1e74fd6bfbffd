#!/usr/bin/env python
"""Convert an MMDetection, AdelaiDet or DeFCN checkpoint for a d2_anchorfree config: ``d2af convert``, same arguments
(the code is ``d2_anchorfree/cli/convert.py``).

    python tools/convert_checkpoint.py --help
"""
import sys

from d2_anchorfree.cli.convert import main

if __name__ == "__main__":
    sys.exit(main())
