#!/usr/bin/env python
"""Run an exported ONNX detector with onnxruntime, without torch or detectron2: ``d2af
predict-onnx``, same arguments (the code is ``d2_anchorfree/runtime/predict_onnx.py``).

    python tools/predict_onnx.py --model output/defcn_onnx/model.onnx \\
        --input "photos/*.jpg" --output output/onnx_predictions
"""
import sys

from d2_anchorfree.runtime.predict_onnx import main

if __name__ == "__main__":
    sys.exit(main())
