"""Conversion rules from published checkpoints of other code bases to d2_anchorfree models.

One module per source (``adelaidet``, ``defcn``, ...), each with ``rename(key)``, ``IGNORED``,
``ZERO_FILLED``, ``convert_tensor(our_key, tensor)`` and ``CHECKPOINTS`` (see the modules'
docstrings). This file is a placeholder; the converter that applies the rules lives elsewhere.
"""
