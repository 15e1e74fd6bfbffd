#!/usr/bin/env python
"""Export a trained detector to ONNX or TorchScript: ``d2af export``, same arguments
(the code is ``d2_anchorfree/cli/export.py``).

    python tools/export_model.py --help
"""
import sys

from d2_anchorfree.cli.export import main

if __name__ == "__main__":
    sys.exit(main())
