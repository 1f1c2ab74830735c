"""Losses as pure functions with the papers' defaults, plus thin modules. Each cites the equation it implements."""

from .contrastive import (
    LabelSimilarityContrastiveLoss,
    NTXentLoss,
    genscl_loss,
    label_similarity_contrastive_loss,
    label_weights,
    nt_xent_loss,
    pairwise_similarity,
    soft_label_weights,
    supcon_loss,
    view_pair_weights,
)
from ..distributed import gather_no_grad, gather_with_grad, rank, rank_offset, world_size
from .global_contrastive import global_genscl, global_nt_xent, global_supcon, global_two_view_contrastive_loss
from .ebclr import ebclr_generative_loss, ebclr_marginal_log_density
from .hdge import HDGEContrastiveLoss, LogitQueue, hdge_contrastive_loss, hdge_label_distribution
from .jem import jem_px_loss

__all__ = [
    "ebclr_generative_loss",
    "ebclr_marginal_log_density",
    "HDGEContrastiveLoss",
    "LogitQueue",
    "hdge_contrastive_loss",
    "hdge_label_distribution",
    "jem_px_loss",
    "global_genscl",
    "global_nt_xent",
    "global_supcon",
    "global_two_view_contrastive_loss",
    "rank",
    "LabelSimilarityContrastiveLoss",
    "NTXentLoss",
    "gather_no_grad",
    "gather_with_grad",
    "genscl_loss",
    "label_similarity_contrastive_loss",
    "label_weights",
    "nt_xent_loss",
    "pairwise_similarity",
    "rank_offset",
    "soft_label_weights",
    "supcon_loss",
    "view_pair_weights",
    "world_size",
]
