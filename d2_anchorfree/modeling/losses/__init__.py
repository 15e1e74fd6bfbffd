"""Loss functions: plain functions citing the paper equation they implement."""
from .focal import focal_loss_with_labels
from .iou import iou_loss, ltrb_as_boxes, paired_iou

__all__ = ["focal_loss_with_labels", "iou_loss", "ltrb_as_boxes", "paired_iou"]
