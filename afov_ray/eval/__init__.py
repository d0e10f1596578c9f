"""afov_ray.eval: confusion matrix and mIoU as the official code scores them
(afov-reference.md section 6.4)."""

from afov_ray.eval.metrics import (ConfusionAccumulator, confusion_matrix, evaluate_report,
                                   iou_per_class, micro_iou, miou, point_accuracy, suppress_class0)

__all__ = ["ConfusionAccumulator", "confusion_matrix", "evaluate_report", "iou_per_class",
           "micro_iou", "miou", "point_accuracy", "suppress_class0"]
