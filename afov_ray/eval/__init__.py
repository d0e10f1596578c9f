"""afov_ray.eval: scoring as the official code does it.

The dataset-level confusion matrix, per-class IoU and mIoU with the official conventions (``metrics``),
the per-split class balance of a pairing's pseudo-labels (``class_balance``) and zero-shot labels / text-query
scores from TMP features with their separation measures (``zeroshot``). Reports over prediction shards
are built by ``afov_ray.pipeline.evaluate``."""


from afov_ray.eval.metrics import (
                                   ConfusionAccumulator,
                                   confusion_matrix,
                                   evaluate_report,
                                   iou_per_class,
                                   micro_iou,
                                   miou,
                                   point_accuracy,
                                   suppress_class0,
)

__all__ = ["ConfusionAccumulator", "confusion_matrix", "evaluate_report", "iou_per_class",
           "micro_iou", "miou", "point_accuracy", "suppress_class0"]
