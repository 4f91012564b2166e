"""The neural ranker family of BERT-RS: GMF, MLP, the semantic branch and their fusion (paper eq. 8-12).

One class, `FusionRanker`, implements every neural variant; a variant is just the set of branches it switches on:

    gmf            l_g                      (NCF's GMF, eq. 9)
    mlp            l_m                      (NCF's MLP, eq. 10-11)
    neumf          [l_g ; l_m]              (NCF / NeuMF)
    bert_rs_paper  [l_s ; l_g ; l_m]        (the paper's model, eq. 8-12, semantic branch exactly as eq. 8)
    bert_rs_neural [l_s ; l_t ; l_g ; l_m]  (the same with the semantic form and text-similarity feature chosen
                                             by `semantic_form` / `text_similarity`; see below)
    semantic_only  l_s (; l_t)              (text alone, an ablation)

Semantic forms (the paper's eq. 8 read with profiles, and one alternative measured in benchmarks/):

    paper       l_s = (u_s (.) b_u) (.) (i_s (.) b_i)                    (dim,)  per-user/item gates on raw profiles
    projected   l_s = (A (b_u - mu_u)) (.) (B (b_i - mu_i))              (factors,)  shared projections A, B learned
                for all users, so a user with few interactions still gets a text term from the projection learned
                on everyone else; centring removes the direction every review shares.

Text-similarity feature l_t = cos(b_u - mu_u, b_i - mu_i) (width 1): the fixed zero-shot text match, handed to the
prediction layer as one more input, whose weight is learned.

User-ID dropout (`user_id_dropout` p, training only): each training example drops the user's ID embeddings (u_g and
u_m together) with probability p, scaling the kept ones by 1 / (1 - p), so the model must also learn to rank from
the item and the text alone, which is all it has for a user with few interactions.

Every scorer in `pipeline.ranking` (these and the baselines) exposes the same small interface, so one evaluator and
one recommender serve them all:

    forward(users, items) -> logits (b,)       training-time pair scores
    loss(users, pos, neg) -> scalar            the training objective for one batch
    score(users, items)   -> (b,)              ranking scores (monotone in the predicted probability)
    score_all(users)      -> (b, n_items)      every item for a batch of users, batched, no per-user loop
    score_parts(users, items) -> {name: (b,)}  additive contributions that sum to the logit, for explanations

The semantic branch reads fixed review-derived profiles b_u, b_i from an embedding cache. They are registered as
non-persistent buffers: never trained, not stored in checkpoints (the checkpoint records the cache's fingerprint and
the cache is reloaded and checked instead).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.embeddings.cache import Profiles
from pipeline.ranking.protocol import TrainableRanker

BRANCHES = ("semantic", "similarity", "gmf", "mlp")
VARIANTS: dict[str, tuple[str, ...]] = {
    "gmf": ("gmf",),
    "mlp": ("mlp",),
    "neumf": ("gmf", "mlp"),
    "bert_rs_neural": ("semantic", "gmf", "mlp"),
    "bert_rs_paper": ("semantic", "gmf", "mlp"),
    "semantic_only": ("semantic",),
}
SEMANTIC_FORMS = ("paper", "projected")


class FusionRanker(TrainableRanker):
    """BERT-RS (Lu et al.) built on NCF (He et al., WWW 2017); the variant picks the branches.

    Prediction (eq. 12): y_hat = sigmoid(w^T [l_s ; l_g ; l_m] + b), trained with binary cross-entropy.
    """

    def __init__(
        self,
        variant: str,
        n_users: int,
        n_items: int,
        factors: int = 32,
        mlp_layers: Sequence[int] = (128, 64, 32),
        dropout: float = 0.0,
        profiles: Profiles | None = None,
        mlp_item_chunk: int = 4096,
        semantic_form: str = "paper",
        text_similarity: bool = False,
        user_id_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"unknown variant {variant!r}; known: {sorted(VARIANTS)}")
        if semantic_form not in SEMANTIC_FORMS:
            raise ValueError(f"unknown semantic form {semantic_form!r}; known: {SEMANTIC_FORMS}")
        if variant == "bert_rs_paper":  # the literal paper model, whatever the configuration says
            semantic_form, text_similarity = "paper", False
        self.variant = variant
        self.branches = VARIANTS[variant]
        if text_similarity and "semantic" in self.branches:
            self.branches = ("semantic", "similarity", *self.branches[1:])
        self.semantic_form = semantic_form
        if not 0.0 <= user_id_dropout < 1.0:
            raise ValueError(f"user_id_dropout must lie in [0, 1), got {user_id_dropout}")
        self.user_id_dropout = user_id_dropout
        self.n_users, self.n_items = n_users, n_items
        self.mlp_item_chunk = mlp_item_chunk
        widths: dict[str, int] = {}

        if "semantic" in self.branches:
            if profiles is None:
                raise ValueError(f"variant {variant} needs review profiles from an embedding cache")
            if profiles.users.shape[0] != n_users or profiles.items.shape[0] != n_items:
                raise ValueError(
                    f"profiles cover {profiles.users.shape[0]} users / {profiles.items.shape[0]} items, "
                    f"the model {n_users} / {n_items}"
                )
            dim = profiles.dim
            b_u = torch.tensor(profiles.users, dtype=torch.float32)  # (n_users, dim)
            b_i = torch.tensor(profiles.items, dtype=torch.float32)  # (n_items, dim)
            if semantic_form == "projected" or text_similarity:
                b_u, b_i = b_u - b_u.mean(0), b_i - b_i.mean(0)
            # b_u, b_i: fixed, never trained, not saved (eq. 8, leakage-free reading: training-review profiles)
            self.register_buffer("b_u", b_u, persistent=False)
            self.register_buffer("b_i", b_i, persistent=False)
            if semantic_form == "paper":
                # u_s, i_s start at 1 so l_s starts as the profile agreement b_u (.) b_i; two small random inits
                # would multiply to ~1e-4 and leave the branch with vanishing gradients.
                self.u_s = nn.Embedding(n_users, dim)
                self.i_s = nn.Embedding(n_items, dim)
                nn.init.ones_(self.u_s.weight)
                nn.init.ones_(self.i_s.weight)
                widths["semantic"] = dim
            else:
                self.proj_u = nn.Linear(dim, factors, bias=False)  # A
                self.proj_i = nn.Linear(dim, factors, bias=False)  # B
                widths["semantic"] = factors
            if text_similarity:
                widths["similarity"] = 1

        if "gmf" in self.branches:
            self.u_g = nn.Embedding(n_users, factors)
            self.i_g = nn.Embedding(n_items, factors)
            nn.init.normal_(self.u_g.weight, std=0.01)  # NCF's initialisation
            nn.init.normal_(self.i_g.weight, std=0.01)
            widths["gmf"] = factors

        if "mlp" in self.branches:
            if mlp_layers[0] % 2:
                raise ValueError(f"mlp_layers[0] = {mlp_layers[0]} must be even: it is the size of [u_m ; i_m]")
            half = mlp_layers[0] // 2
            self.u_m = nn.Embedding(n_users, half)
            self.i_m = nn.Embedding(n_items, half)
            nn.init.normal_(self.u_m.weight, std=0.01)
            nn.init.normal_(self.i_m.weight, std=0.01)
            layers: list[nn.Module] = []
            width = mlp_layers[0]
            for out in mlp_layers:  # z_L = ReLU(W_L^T z_{L-1} + b_L), eq. 11
                layers += [nn.Linear(width, out), nn.ReLU()]
                if dropout > 0:
                    layers.append(nn.Dropout(dropout))
                width = out
            self.mlp = nn.Sequential(*layers)
            widths["mlp"] = width

        self.widths = widths
        self.predict = nn.Linear(sum(widths.values()), 1)  # w, b of eq. 12

    # ------------------------------------------------------------------------------------------------ branches

    def semantic(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """l_s: eq. 8 with profiles in place of the pair's own review (paper form, (b, dim)) or its projected
        form (b, factors)."""
        return self._semantic_user(users) * self._semantic_item(items)

    def _semantic_user(self, users: torch.Tensor) -> torch.Tensor:
        if self.semantic_form == "paper":
            return self.u_s(users) * self.b_u[users]  # u_s (.) b_u
        return self.proj_u(self.b_u[users])  # A b_u

    def _semantic_item(self, items: torch.Tensor | None = None) -> torch.Tensor:
        """i_s (.) b_i (or B b_i) for `items`, or for every item when `items` is None."""
        if self.semantic_form == "paper":
            if items is None:
                return self.i_s.weight * self.b_i
            return self.i_s(items) * self.b_i[items]
        return self.proj_i(self.b_i if items is None else self.b_i[items])

    def similarity(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """l_t = cos(b_u, b_i) of the centred profiles, the zero-shot text match. (b, 1)"""
        unit_u = F.normalize(self.b_u[users], dim=-1, eps=1e-8)
        unit_i = F.normalize(self.b_i[items], dim=-1, eps=1e-8)
        return (unit_u * unit_i).sum(-1, keepdim=True)

    def gmf(self, users: torch.Tensor, items: torch.Tensor, keep: torch.Tensor | float = 1.0) -> torch.Tensor:
        """l_g = u_g (.) i_g, eq. 9. (b, factors)"""
        return (self.u_g(users) * keep) * self.i_g(items)

    def mlp_branch(self, users: torch.Tensor, items: torch.Tensor, keep: torch.Tensor | float = 1.0) -> torch.Tensor:
        """l_m = MLP([u_m ; i_m]), eq. 10-11. (b, mlp_layers[-1])"""
        return self.mlp(torch.cat([self.u_m(users) * keep, self.i_m(items)], dim=-1))

    def user_id_keep(self, users: torch.Tensor) -> torch.Tensor | float:
        """Per-example multiplier of the user's ID embeddings: 0 or 1 / (1 - p) while training, 1 otherwise. (b, 1)"""
        if not (self.training and self.user_id_dropout > 0):
            return 1.0
        ones = torch.ones(users.shape[0], 1, device=users.device)
        return F.dropout(ones, self.user_id_dropout, training=True)

    def branch_vectors(self, users: torch.Tensor, items: torch.Tensor) -> dict[str, torch.Tensor]:
        """The switched-on branch vectors in fusion order [l_s ; l_g ; l_m]."""
        keep = self.user_id_keep(users)  # one draw per example, shared by the GMF and MLP branches
        fns = {"semantic": self.semantic, "similarity": self.similarity,
               "gmf": lambda u, i: self.gmf(u, i, keep), "mlp": lambda u, i: self.mlp_branch(u, i, keep)}
        return {name: fns[name](users, items) for name in BRANCHES if name in self.branches}

    def _weight_slices(self) -> dict[str, torch.Tensor]:
        """The prediction layer's w split per branch, in fusion order. {name: (width,)}"""
        w = self.predict.weight[0]
        out, start = {}, 0
        for name in BRANCHES:
            if name in self.branches:
                out[name] = w[start : start + self.widths[name]]
                start += self.widths[name]
        return out

    # ------------------------------------------------------------------------------------------------ interface

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Logits w^T [l_s ; l_g ; l_m] + b (eq. 12 before the sigmoid). users, items: (b,) -> (b,)"""
        z = torch.cat(list(self.branch_vectors(users, items).values()), dim=-1)  # (b, sum of widths)
        return self.predict(z).squeeze(-1)

    def loss(self, users: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
        """Binary cross-entropy over positives (label 1) and sampled negatives (label 0), eq. 12.

        users, pos: (b,); neg: (b, k). Averaged over all b * (1 + k) interactions.
        """
        return pointwise_bce(self, users, pos, neg)

    def score(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Ranking score = the logit (monotone in y_hat, and free of the ties a saturated sigmoid would create)."""
        return self.forward(users, items)

    def score_parts(self, users: torch.Tensor, items: torch.Tensor) -> dict[str, torch.Tensor]:
        """Each branch's contribution w_branch^T l_branch, plus the bias; they sum to the logit. {name: (b,)}"""
        slices = self._weight_slices()
        parts = {name: vec @ slices[name] for name, vec in self.branch_vectors(users, items).items()}
        parts["bias"] = self.predict.bias.expand(users.shape[0])
        return parts

    def score_all(self, users: torch.Tensor) -> torch.Tensor:
        """Logits for every item, (b,) -> (b, n_items).

        The semantic and GMF terms are bilinear, so they reduce to one matrix product each; the MLP's first layer
        splits into a user part plus an item part, and the rest runs over item chunks to bound memory at
        b x chunk x width.
        """
        slices = self._weight_slices()
        out = self.predict.bias.expand(users.shape[0], self.n_items).clone()  # (b, n_items)
        if "semantic" in self.branches:
            left = self._semantic_user(users) * slices["semantic"]  # (b, width)
            out = out + left @ self._semantic_item().T
        if "similarity" in self.branches:
            unit_u = F.normalize(self.b_u[users], dim=-1, eps=1e-8)  # (b, dim)
            unit_i = F.normalize(self.b_i, dim=-1, eps=1e-8)  # (n_items, dim)
            out = out + slices["similarity"] * (unit_u @ unit_i.T)
        if "gmf" in self.branches:
            out = out + (self.u_g(users) * slices["gmf"]) @ self.i_g.weight.T
        if "mlp" in self.branches:
            out = out + self._mlp_all(users, slices["mlp"])
        return out

    def _mlp_all(self, users: torch.Tensor, w_m: torch.Tensor) -> torch.Tensor:
        first: nn.Linear = self.mlp[0]
        half = self.u_m.weight.shape[1]
        user_part = self.u_m(users) @ first.weight[:, :half].T + first.bias  # (b, h1)
        item_part = self.i_m.weight @ first.weight[:, half:].T  # (n_items, h1)
        chunks = []
        for start in range(0, self.n_items, self.mlp_item_chunk):
            z = user_part[:, None, :] + item_part[None, start : start + self.mlp_item_chunk, :]  # (b, c, h1)
            z = self.mlp[1:](z)  # (b, c, last)
            chunks.append(z @ w_m)  # (b, c)
        return torch.cat(chunks, dim=1)


def pointwise_bce(model: nn.Module, users: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    """Eq. 12: mean BCE over b positives and b * k negatives. users, pos: (b,); neg: (b, k)."""
    k = neg.shape[1]
    all_users = torch.cat([users, users.repeat_interleave(k)])  # (b (1 + k),)
    all_items = torch.cat([pos, neg.reshape(-1)])
    labels = torch.cat([torch.ones_like(pos, dtype=torch.float32), torch.zeros(neg.numel(), device=neg.device)])
    return F.binary_cross_entropy_with_logits(model(all_users, all_items), labels)


def shuffle_profiles(profiles: Profiles, seed: int) -> Profiles:
    """The ablation: permute profiles across users and across items (seeded).

    The vectors keep their distribution and scale, but no longer belong to the user or item they describe, so any
    gain that survives the shuffle is not a text signal.
    """
    rng = np.random.default_rng(seed)
    pu = rng.permutation(profiles.users.shape[0])
    pi = rng.permutation(profiles.items.shape[0])
    return Profiles(
        users=profiles.users[pu],
        items=profiles.items[pi],
        user_has_reviews=profiles.user_has_reviews[pu],
        item_has_reviews=profiles.item_has_reviews[pi],
        meta=profiles.meta,
    )
