"""The ``d2af`` command line: one module per job, each with ``main(argv=None, prog=None)``.

* ``d2af train`` / ``d2af evaluate``: :mod:`d2_anchorfree.cli.train` (``train_net.py``);
* ``d2af predict``: :mod:`d2_anchorfree.cli.predict` (``tools/predict.py``);
* ``d2af export``: :mod:`d2_anchorfree.cli.export` (``tools/export_model.py``);
* ``d2af predict-onnx``: :mod:`d2_anchorfree.runtime.predict_onnx` (``tools/predict_onnx.py``);
* ``d2af convert``: :mod:`d2_anchorfree.cli.convert` (``tools/convert_checkpoint.py``);
* ``d2af benchmark``: :mod:`d2_anchorfree.cli.benchmark` (``tools/benchmark*.py``);
* ``d2af prepare-data``: :mod:`d2_anchorfree.cli.prepare_data` (``tools/prepare_trees.py``).

:mod:`d2_anchorfree.cli.main` dispatches; nothing is imported here.
"""
