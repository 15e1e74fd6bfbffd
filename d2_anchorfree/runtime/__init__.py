"""Runtimes of exported detectors that need neither torch nor detectron2.

* :mod:`d2_anchorfree.runtime.predict_onnx`: an ONNX model written by ``d2af export`` run with
  onnxruntime or OpenVINO (``d2af predict-onnx [--runtime openvino]``).

Nothing is imported here, so that ``import d2_anchorfree.runtime`` works without onnxruntime.
"""
