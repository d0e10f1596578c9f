"""afov_ray.losses: TMP losses (superpoint pooling, superpixel-superpoint InfoNCE, text-superpoint loss;
paper section 3.2) and the CE + Lovasz-Softmax segmentation loss (paper section 3.3). See docs/method.md."""


from afov_ray.losses.lovasz import ce_lovasz_loss, lovasz_grad, lovasz_softmax
from afov_ray.losses.pooling import join_superpixel_features, superpixel_global_id, superpoint_pooling
from afov_ray.losses.tmp import (
    TMPLoss,
    superpixel_superpoint_nce,
    text_soft_targets,
    text_superpoint_loss,
    tmp_loss,
)

__all__ = [
    "TMPLoss",
    "ce_lovasz_loss",
    "join_superpixel_features",
    "lovasz_grad",
    "lovasz_softmax",
    "superpixel_global_id",
    "superpixel_superpoint_nce",
    "superpoint_pooling",
    "text_soft_targets",
    "text_superpoint_loss",
    "tmp_loss",
]
