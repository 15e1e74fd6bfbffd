#!/usr/bin/env python
"""Train and evaluate d2_anchorfree detectors: ``d2af train`` (and ``d2af evaluate`` for
``--eval-only``), same arguments (the code is ``d2_anchorfree/cli/train.py``).

    python train_net.py --config-file configs/FCOS/FCOS_tiny_R_18_cpu.yaml
    python train_net.py --config-file ... --eval-only MODEL.WEIGHTS output/x/model_final.pth
"""
from d2_anchorfree.cli.train import argument_parser, main, run  # noqa: F401  (main, argument_parser: for scripts)

if __name__ == "__main__":
    run()
