"""Weight files: safe reading (no code runs from a file), atomic checkpoints with a resume that
survives a bad file, loading that refuses weights which leave the model unset, and the class
names stored with the weights."""
from .classes import CLASSES_KEY, check_classes, classes_metadata, dataset_classes, generic_classes
from .checkpointer import AnchorFreeCheckpointer, WeightsMismatchError, atomic_write, load_inference_weights
from .safe_load import RestrictedUnpickler, UnsafeWeightFileError, install_safe_loading, load_checkpoint_file

__all__ = [
    "CLASSES_KEY",
    "AnchorFreeCheckpointer",
    "RestrictedUnpickler",
    "UnsafeWeightFileError",
    "WeightsMismatchError",
    "atomic_write",
    "check_classes",
    "classes_metadata",
    "dataset_classes",
    "generic_classes",
    "install_safe_loading",
    "load_checkpoint_file",
    "load_inference_weights",
]
