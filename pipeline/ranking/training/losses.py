"""Training objectives shared by the trainable rankers."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def pointwise_bce(model: nn.Module, users: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    """Eq. 12: mean BCE over b positives (label 1) and b * k negatives (label 0). users, pos: (b,); neg: (b, k)."""
    k = neg.shape[1]
    all_users = torch.cat([users, users.repeat_interleave(k)])  # (b (1 + k),)
    all_items = torch.cat([pos, neg.reshape(-1)])
    labels = torch.cat([torch.ones_like(pos, dtype=torch.float32), torch.zeros(neg.numel(), device=neg.device)])
    return F.binary_cross_entropy_with_logits(model(all_users, all_items), labels)


def bpr(pos_scores: torch.Tensor, neg_scores: torch.Tensor) -> torch.Tensor:
    """BPR (Rendle et al., UAI 2009): -mean log sigmoid(s_pos - s_neg). (b, 1), (b, k) -> ()"""
    return -F.logsigmoid(pos_scores - neg_scores).mean()
