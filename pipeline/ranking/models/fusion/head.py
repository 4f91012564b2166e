"""The fusion head: a variant is the list of branches it switches on, fused by one linear layer (paper eq. 12).

    gmf            l_g                      (NCF's GMF)
    mlp            l_m                      (NCF's MLP)
    neumf          [l_g ; l_m]              (NCF / NeuMF)
    bert_rs_paper  [l_s ; l_g ; l_m]        (the paper's model, semantic branch exactly as eq. 8)
    bert_rs_neural [l_s ; l_t ; l_g ; l_m]  (semantic form and similarity feature by configuration)
    semantic_only  l_s (; l_t)              (text alone, an ablation)

User-ID dropout (`user_id_dropout` p, training only): each training example drops the user's ID embeddings (u_g and
u_m together) with probability p, scaling the kept ones by 1 / (1 - p), so the model must also learn to rank from
the item and the text alone, which is all it has for a user with few interactions.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.embeddings.cache import Profiles
from pipeline.ranking.models.fusion.gmf import GMFBranch
from pipeline.ranking.models.fusion.mlp import PAIRS_PER_BLOCK, MLPBranch
from pipeline.ranking.models.fusion.semantic import PaperSemantic, ProjectedSemantic, TextSimilarity
from pipeline.ranking.training.losses import pointwise_bce
from pipeline.ranking.protocol import TrainableRanker

BRANCHES = ("semantic", "gmf", "mlp")  # every branch the head can switch on, in fusion order
SEMANTIC_FORMS = ("paper", "projected")


class FusionRanker(TrainableRanker):
    """BERT-RS (Lu et al.) built on NCF (He et al., WWW 2017): y_hat = sigmoid(w^T [l_s ; l_t ; l_g ; l_m] + b),
    trained with binary cross-entropy (eq. 12); ranking scores are the logits."""

    def __init__(
        self,
        branches: Sequence[str],
        n_users: int,
        n_items: int,
        factors: int = 32,
        mlp_layers: Sequence[int] = (128, 64, 32),
        dropout: float = 0.0,
        profiles: Profiles | None = None,
        mlp_pairs_per_block: int = PAIRS_PER_BLOCK,
        semantic_form: str = "paper",
        text_similarity: bool = False,
        user_id_dropout: float = 0.0,
        literal_paper: bool = False,
    ) -> None:
        """Parameters
        ----------
        branches
            The branches switched on, of `BRANCHES` (the registry gives each model its own: NeuMF gmf + mlp,
            bert_rs_paper all three, ...).
        n_users, n_items
            Sizes of the ID embeddings.
        factors, mlp_layers, dropout
            NCF's sizes (the MLP tower ends at its last layer's width).
        profiles
            The cache's review profiles, for the semantic branch.
        mlp_pairs_per_block
            (user, item) pairs the MLP tower scores at a time in `score_all`.
        semantic_form, text_similarity
            The semantic branch's reading (eq. 8 as published, or projected) and the cosine feature.
        user_id_dropout
            Share of training examples whose user ID embeddings are dropped.
        literal_paper
            The paper's model whatever the other settings say: eq. 8 as published, no similarity feature.
        """
        super().__init__()
        if not branches or any(b not in BRANCHES for b in branches):
            raise ValueError(f"branches must be a non-empty subset of {BRANCHES}, got {list(branches)}")
        if semantic_form not in SEMANTIC_FORMS:
            raise ValueError(f"unknown semantic form {semantic_form!r}; known: {SEMANTIC_FORMS}")
        if not 0.0 <= user_id_dropout < 1.0:
            raise ValueError(f"user_id_dropout must lie in [0, 1), got {user_id_dropout}")
        if literal_paper:  # the literal paper model, whatever the configuration says
            semantic_form, text_similarity = "paper", False
        self.semantic_form, self.user_id_dropout = semantic_form, user_id_dropout
        self.n_users, self.n_items = n_users, n_items
        modules: dict[str, nn.Module] = {}
        if "semantic" in branches:
            b_u, b_i = fixed_profiles(profiles, n_users, n_items,
                                      centre=semantic_form == "projected" or text_similarity)
            modules["semantic"] = (PaperSemantic(b_u, b_i) if semantic_form == "paper"
                                   else ProjectedSemantic(b_u, b_i, factors))
            if text_similarity:
                modules["similarity"] = TextSimilarity(b_u, b_i)
        if "gmf" in branches:
            modules["gmf"] = GMFBranch(n_users, n_items, factors)
        if "mlp" in branches:
            modules["mlp"] = MLPBranch(n_users, n_items, mlp_layers, dropout, mlp_pairs_per_block)
        self.branches = nn.ModuleDict(modules)  # fusion order: [l_s ; l_t ; l_g ; l_m]
        self.widths = {name: branch.width for name, branch in self.branches.items()}
        self.predict = nn.Linear(sum(self.widths.values()), 1)  # w, b of eq. 12

    def user_id_keep(self, users: torch.Tensor) -> torch.Tensor | float:
        """Per-example multiplier of the user's ID embeddings: 0 or 1 / (1 - p) while training, 1 otherwise. (b, 1)"""
        if not (self.training and self.user_id_dropout > 0):
            return 1.0
        ones = torch.ones(users.shape[0], 1, device=users.device)
        return F.dropout(ones, self.user_id_dropout, training=True)

    def branch_vectors(self, users: torch.Tensor, items: torch.Tensor) -> dict[str, torch.Tensor]:
        """Each switched-on branch's vector, in fusion order. {name: (b, width)}"""
        keep = self.user_id_keep(users)  # one draw per example, shared by the GMF and MLP branches
        return {name: branch(users, items, keep) for name, branch in self.branches.items()}

    def weight_slices(self) -> dict[str, torch.Tensor]:
        """The prediction layer's w split per branch. {name: (width,)}"""
        return dict(zip(self.widths, torch.split(self.predict.weight[0], list(self.widths.values()))))

    # ------------------------------------------------------------------------------------------------ interface

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Logits w^T [l_s ; l_t ; l_g ; l_m] + b (eq. 12 before the sigmoid). users, items: (b,) -> (b,)"""
        z = torch.cat(list(self.branch_vectors(users, items).values()), dim=-1)  # (b, sum of widths)
        return self.predict(z).squeeze(-1)

    def loss(self, users: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
        """Binary cross-entropy over positives (label 1) and sampled negatives (label 0), eq. 12."""
        return pointwise_bce(self, users, pos, neg)

    def score(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Ranking score = the logit (monotone in y_hat, and free of the ties a saturated sigmoid would create)."""
        return self.forward(users, items)

    def score_parts(self, users: torch.Tensor, items: torch.Tensor) -> dict[str, torch.Tensor]:
        """Each branch's contribution w_branch^T l_branch, plus the bias; they sum to the logit. {name: (b,)}"""
        slices = self.weight_slices()
        parts = {name: vec @ slices[name] for name, vec in self.branch_vectors(users, items).items()}
        parts["bias"] = self.predict.bias.expand(users.shape[0])
        return parts

    def score_all(self, users: torch.Tensor) -> torch.Tensor:
        """Logits for every item, (b,) -> (b, n_items): each branch adds its own w^T l over the catalogue."""
        out = self.predict.bias.expand(users.shape[0], self.n_items).clone()  # (b, n_items)
        for name, w in self.weight_slices().items():
            out = out + self.branches[name].score_all(users, w)
        return out


def fixed_profiles(
    profiles: Profiles | None, n_users: int, n_items: int, centre: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """b_u, b_i as float tensors, centred when a form compares directions (the direction every review shares
    carries no preference). (n_users, dim), (n_items, dim)"""
    if profiles is None:
        raise ValueError("the semantic branch needs review profiles from an embedding cache")
    if profiles.users.shape[0] != n_users or profiles.items.shape[0] != n_items:
        raise ValueError(
            f"profiles cover {profiles.users.shape[0]} users / {profiles.items.shape[0]} items, "
            f"the model {n_users} / {n_items}"
        )
    b_u = torch.tensor(profiles.users, dtype=torch.float32)
    b_i = torch.tensor(profiles.items, dtype=torch.float32)
    return (b_u - b_u.mean(0), b_i - b_i.mean(0)) if centre else (b_u, b_i)
