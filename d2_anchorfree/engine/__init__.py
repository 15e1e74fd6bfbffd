"""Training/evaluation glue on top of detectron2's DefaultTrainer."""
from .predictor import build_predictor
from .trainer import AnchorFreeTrainer, setup_cfg

__all__ = ["AnchorFreeTrainer", "build_predictor", "setup_cfg"]
