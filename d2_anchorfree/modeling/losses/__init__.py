"""Loss functions: plain functions citing the paper equation they implement."""
from .focal import check_focal_parameters, focal_loss_on_probabilities, focal_loss_with_labels
from .varifocal import varifocal_loss  # noqa: F401
from .iou import check_iou_loss_type, iou_loss
from .quality_focal import quality_focal_loss  # noqa: F401
from .distribution_focal import dfl_targets, distribution_focal_loss  # noqa: F401

__all__ = ["check_focal_parameters", "focal_loss_with_labels", "check_iou_loss_type", "iou_loss"]
