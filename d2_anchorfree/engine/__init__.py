"""Training/evaluation glue on top of detectron2's DefaultTrainer."""
from .trainer import AnchorFreeTrainer, setup_cfg

__all__ = ["AnchorFreeTrainer", "setup_cfg"]
