"""Weight files: safe reading (no code runs from a file), atomic checkpoints with a resume that
survives a bad file, and loading that refuses weights which leave the model unset."""
from .checkpointer import AnchorFreeCheckpointer, WeightsMismatchError, atomic_write, load_inference_weights
from .safe_load import RestrictedUnpickler, UnsafeWeightFileError, install_safe_loading, load_checkpoint_file

__all__ = [
    "AnchorFreeCheckpointer",
    "RestrictedUnpickler",
    "UnsafeWeightFileError",
    "WeightsMismatchError",
    "atomic_write",
    "install_safe_loading",
    "load_checkpoint_file",
    "load_inference_weights",
]
