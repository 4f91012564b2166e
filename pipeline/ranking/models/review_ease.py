"""BERT-RS, the default model: a closed-form item-item recommender that reads the review vectors three ways.

    B       = argmin ||X - XB||^2 + a m ||F^T - F^T B||^2 + lambda R(B)   s.t. diag(B) = 0
              R(B) = ||B||^2            "ease": text as side information (Jeunen et al. 2020) on EASE (Steck 2019)
                   | ||B - S||^2        "l3ae": weights pulled toward a text item-item matrix S (L3AE, CIKM 2025)
    S       = argmin ||F^T - F^T S||^2 + nu ||S||^2  s.t. diag(S) = 0        (EASE on the text gram, nu = 1)
    t_u     = x_u K,  K = F F^T with a zero diagonal          "item_neighbours": items whose reviews read alike
            | cos(b_u - mu_u, b_i - mu_i)                       "user_profile": the user's reviews against the item's
            | cos(r_u - mu_r, b_i - mu_i)                       "user_profile_recent": the same, r_u weighing the
                                                                 user's newest review 1, the one before 1/2, ...
    score   = z_u(x_u B) + w z_u(t_u) + p z(log(1 + c))         c: training interactions per item (popularity)
            | z(log(1 + c))                                      "popularity alone", searched when p has a grid

F holds the unit-length centred item profiles (the mean of each item's *training* review vectors), optionally
whitened first (ZCA fitted on the training item profiles: sentence embeddings are anisotropic, so raw cosines are
dominated by a few shared directions; Su et al. 2021). x_u is the user's row of fitted pairs (training pairs, plus
the validation pairs after the final fit, as are c, X and m), z_u standardises a user's scores over all items, and m
is the mean number of fitted interactions per item, so that `a` reads as "the text gram counts as `a` average items'
worth of co-occurrence" on any dataset. The profiles and F are training-review means whatever the pairs; where the
final fit will score test one interaction after the profile's newest review (leave-one-out), the settings are chosen
with user profiles one review behind (`use_profiles`, pipeline/ranking/training/lagged.py), as test will read them.

Closed forms, with G_a = X^T X + a m F F^T and P = (G_a + lambda I)^-1:
    "ease":  B = I - P diag(1 / diag P)
    "l3ae":  B~ = P (G_a + lambda S) = I - lambda P (I - S),   B = B~ - P diag(diag(B~) / diag(P))
(the Lagrange multipliers of diag(B) = 0 enter as B~ - P diag(mu); mu is fixed by the constraint; with S = 0 the
second is the first). One eigendecomposition X^T X = V diag(s) V^T serves the whole grid: every lambda is a
diagonal rescale, Q = V diag(1 / (s + lambda)) V^T; the text gram a m F F^T is a rank-d update of it, folded into P
by Woodbury's identity; S is applied in factored form (S = I - P_t diag(1 / diag P_t), P_t = (F F^T + nu I)^-1 of
rank-d structure), and validation scores x_u B are computed from x_u V without forming B or S.

The grid the model offers (`candidates`) and pipeline/ranking/selection/select.py chooses from, on full-ranking NDCG@10
of the validation split only (test is never read): lambda, a, R, whitening, the text match, w and p jointly, plus the
popularity-alone point. a = w = p = 0 with R = "ease" is EASE at that lambda, and popularity is a point of its own, so
on validation the model matches or beats both. Leakage: F and b_u are pooled from training reviews only (the cache's
profiles); the shuffled-profile ablation scrambles both and must lose the gain.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Container, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.embeddings.cache import Profiles
from pipeline.ranking.models.baselines import EASE, EigenGram, ease_from_inverse_, ridge_inverse_, score_via_all
from pipeline.ranking.protocol import ClosedFormRanker, WeightedSums
from pipeline.ranking.selection.spaces import REGULARISERS, TEXT_MATCHES, ReviewAwareSpace, Setting

if TYPE_CHECKING:
    from pipeline.ranking.selection.choice import Choice

TEXT_PRIOR_LAMBDA = 1.0  # nu of S: one item's worth of self-similarity (the text gram's diagonal is 1)
WHITEN_SHRINKAGE = 0.1  # eigenvalue floor of the whitening, as a fraction of the mean: keeps noise directions tame


def standardise(scores: torch.Tensor) -> torch.Tensor:
    """Per-row z-score. (b, n) -> (b, n)"""
    return (scores - scores.mean(-1, keepdim=True)) / (scores.std(-1, keepdim=True) + 1e-8)


def standardise_(scores: torch.Tensor) -> torch.Tensor:
    """`standardise` written over `scores` (the same values, bit for bit, without a second (b, n) matrix)."""
    mean, scale = scores.mean(-1, keepdim=True), scores.std(-1, keepdim=True) + 1e-8
    return scores.sub_(mean).div_(scale)


def centred_units(vectors: np.ndarray) -> torch.Tensor:
    """Unit-length rows after removing the mean row: the direction every review shares carries no preference."""
    t = torch.tensor(vectors, dtype=torch.float32)
    return F.normalize(t - t.mean(0), dim=-1, eps=1e-8)


def whitening_transform(items: np.ndarray, shrinkage: float = WHITEN_SHRINKAGE) -> tuple[np.ndarray, np.ndarray]:
    """ZCA whitening (mean, W) fitted on item profiles, so that (items - mean) W has identity covariance when
    `shrinkage` is 0; eigenvalues get a floor of `shrinkage` times their mean. (n, d) -> ((d,), (d, d))"""
    x = torch.as_tensor(np.asarray(items), dtype=torch.float64)
    mean = x.mean(0)
    cov = (x - mean).T @ (x - mean) / max(len(x) - 1, 1)
    evals, evecs = torch.linalg.eigh(cov)
    evals = evals.clamp(min=0.0)
    floor = shrinkage * evals.mean() + 1e-12
    return mean.numpy(), ((evecs / torch.sqrt(evals + floor)) @ evecs.T).numpy()


def whitened_units(profiles: Profiles, users: np.ndarray | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit rows of the whitened user and item profiles; the whitening is fitted on the items with training
    reviews and applied to both sides (users centred on their own mean). `users`: another user table than
    `profiles.users` (the recent profiles). (n_users, d), (n_items, d)"""
    fitted = profiles.items[profiles.item_has_reviews] if profiles.item_has_reviews.sum() > 1 else profiles.items
    mean, w = whitening_transform(fitted)
    items = (profiles.items - mean) @ w
    users = profiles.users if users is None else users
    users = (users - users.mean(0)) @ w
    return (F.normalize(torch.tensor(users, dtype=torch.float32), dim=-1, eps=1e-8),
            F.normalize(torch.tensor(items, dtype=torch.float32), dim=-1, eps=1e-8))


def per_item_count(gram: torch.Tensor) -> torch.Tensor:
    """m, the mean number of fitted interactions per item (the mean of X^T X's diagonal): the unit the text gram's
    side weight is counted in, read from the gram the solve or the grid is about to use."""
    return torch.diagonal(gram).mean()


def with_side_gram(x_q: torch.Tensor, q_diag: torch.Tensor, q_f: torch.Tensor | None, unit: torch.Tensor,
                   scale: float, with_p_f: bool = False,
                   x_q_f: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """x P, diag P and (optionally) P F for P = (G + scale F F^T + lambda I)^-1, from x Q, diag Q and Q F for
    Q = (G + lambda I)^-1 and Woodbury's identity P = Q - scale Q F M^-1 F^T Q, M = I + scale F^T Q F (d x d): the
    rank-d text gram never needs a decomposition of its own. x_q: (b, n); q_diag: (n,); q_f: (n, d), or None when
    scale is 0 and P F is not asked for; unit: F (n, d); x_q_f: x Q F (b, d) where the caller has it (it is the same
    for every scale). -> (b, n), (n,), (n, d) or None"""
    if not scale:
        return x_q, q_diag, q_f if with_p_f else None
    m = torch.eye(unit.shape[1], dtype=unit.dtype, device=unit.device) + scale * (unit.T @ q_f)
    q_f_m = torch.linalg.solve(m, q_f.T).T  # Q F M^-1 (M symmetric)
    x_p = x_q - scale * (x_q @ unit if x_q_f is None else x_q_f) @ q_f_m.T
    p_diag = q_diag - scale * (q_f_m * q_f).sum(1)
    p_f = q_f - scale * q_f_m @ (q_f.T @ unit) if with_p_f else None
    return x_p, p_diag, p_f


def l3ae_scores(x: torch.Tensor, x_p: torch.Tensor, p_diag: torch.Tensor, p_f: torch.Tensor, prior: "LowRankPrior",
                ease_lambda: float) -> torch.Tensor:
    """x B for L3AE's B = B~ - P diag(diag(B~) / diag(P)), B~ = I - lambda P (I - S), from x P, diag P and P F (a
    function of its own, so that its (b, n) temporaries are gone before the grid yields the result). (b, n)"""
    ps_diag = prior.diagonal_of(p_diag, p_f)
    mu = (1.0 - ease_lambda * (p_diag - ps_diag)) / p_diag  # diag(B~) / diag(P)
    return x - ease_lambda * prior.complement_times(x_p) - x_p * mu


class LowRankPrior:
    """L3AE's text prior S = I - P_t diag(1 / diag P_t) (EASE on the text gram, `ease_weights(F F^T, nu)`, zero
    diagonal) in factored form: P_t = (F F^T + nu I)^-1 = (I - F K F^T) / nu with K = (nu I + F^T F)^-1 (d x d), so
    neither S nor P_t is ever formed (n^2 memory, an n^3 inverse)."""

    def __init__(self, unit: torch.Tensor, nu: float) -> None:
        self.unit, self.nu = unit, nu  # F (n, d)
        identity = torch.eye(unit.shape[1], dtype=unit.dtype, device=unit.device)
        self.k = torch.linalg.inv(nu * identity + unit.T @ unit)  # (d, d)
        self.inverse_pt_diag = nu / (1.0 - ((unit @ self.k) * unit).sum(1))  # 1 / diag P_t (n,)

    def complement_times(self, rows: torch.Tensor) -> torch.Tensor:
        """rows (I - S) = rows P_t diag(1 / diag P_t), P_t = (I - F K F^T) / nu, built in one new (b, n) matrix (the
        final solve passes all n rows of P: each temporary is n^2). (b, n) -> (b, n)"""
        out = ((rows @ self.unit) @ self.k) @ self.unit.T  # rows F K F^T
        return out.neg_().add_(rows).div_(self.nu).mul_(self.inverse_pt_diag)

    def diagonal_of(self, p_diag: torch.Tensor, p_f: torch.Tensor) -> torch.Tensor:
        """diag(P S) for a symmetric P, from diag P and P F: diag P - diag(P P_t) / diag P_t. (n,)"""
        p_pt_diag = (p_diag - ((p_f @ self.k) * self.unit).sum(1)) / self.nu
        return p_diag - p_pt_diag * self.inverse_pt_diag


class SearchBasis:
    """What every pass of one search over the grid shares, whichever users it scores: the decomposition
    X^T X = V diag(s) V^T, m (`per_item_count`), per whitening F, V^T F and the prior S, and per (whitening, lambda)
    Q F = V diag(1 / (s + lambda)) V^T F. Each is made at its first use: a screened search's screen and its choosing
    pass would otherwise make the (n, n) x (n, d) products twice (n^2 d each, 12 of them at the default grid)."""

    def __init__(self, eig: EigenGram, per_item: torch.Tensor, model: "ReviewAwareEASE",
                 dtype: torch.dtype = torch.float64) -> None:
        if eig.v.dtype != dtype:  # one copy in the search's type; the caller lets the float64 one go
            eig = EigenGram.from_parts(eig.s.to(dtype), eig.v.to(dtype))
        self.eig, self.per_item, self._model, self.dtype = eig, per_item.to(dtype), model, dtype
        self._text: dict[bool, tuple[torch.Tensor, torch.Tensor, LowRankPrior | None]] = {}
        self._q_f: dict[tuple[bool, float], torch.Tensor] = {}

    def text(self, whiten: bool) -> tuple[torch.Tensor, torch.Tensor, "LowRankPrior | None"]:
        """F (n, d), V^T F (n, d) and S in factored form (None when the space has no L3AE prior), in the search's
        type."""
        if whiten not in self._text:
            unit = self._model.units(whiten)[1].to(self.dtype)
            prior = LowRankPrior(unit, TEXT_PRIOR_LAMBDA) if self._model.space.with_prior else None
            self._text[whiten] = (unit, self.eig.v.T @ unit, prior)
        return self._text[whiten]

    def q_f(self, whiten: bool, ease_lambda: float) -> torch.Tensor:
        """Q F at this lambda, (n, d) in the search's type."""
        key = (whiten, ease_lambda)
        if key not in self._q_f:
            self._q_f[key] = self.eig.inverse_times(self.text(whiten)[1], ease_lambda)
        return self._q_f[key]


class ReviewAwareEASE(ClosedFormRanker):
    """BERT-RS's dense solver: an EASE item model with the review text as side information or prior, plus a
    standardised text match and a popularity term (the module docstring gives the formulas).

    Scores are z_u(x_u B) + w z_u(t_u) + p z(log(1 + c)) over every item, so the model ranks the whole catalogue. The
    setting (lambda, side weight a, regulariser, whitening, text match, w, p) is chosen on validation among what
    `candidates` offers and kept in buffers that the checkpoint saves beside B; the profiles are reloaded from the
    cache, never saved.
    """

    solver = "dense"  # the EASE solves; pipeline/ranking/models/scalable.py is the other bert_rs solver
    fits_on_device = True
    ranks_whole_catalogue = True  # scores come from full rows; profile-nearest candidates would drop EASE's picks

    def __init__(self, n_users: int, n_items: int, profiles: Profiles, space: ReviewAwareSpace | None = None) -> None:
        """
        Parameters
        ----------
        n_users, n_items : The matrix's shape.
        profiles : The embedding cache's training-review profiles (pipeline/embeddings/cache.py).
        space : The settings `candidates` offers (pipeline/ranking/selection/spaces.py); one plain EASE setting
            at lambda 500 when None. Before any search the model stands in `space.first`.
        """
        super().__init__()
        self.space = space = space if space is not None else ReviewAwareSpace()
        if "user_profile_recent" in space.matches and profiles.recent_users is None:
            raise ValueError("text match user_profile_recent needs the recency-weighted user profiles "
                             "(pipeline.embeddings.recency.with_recent_users)")
        self.n_users, self.n_items = n_users, n_items
        first = space.first
        self.ease = EASE(n_users, n_items, first.ease_lambda)
        # the choices, saved in the checkpoint beside ease.B (which already includes lambda, side info and prior)
        self.register_buffer("ease_lambda", torch.tensor(first.ease_lambda, dtype=torch.float64))
        self.register_buffer("side_weight", torch.tensor(first.side_weight))
        self.register_buffer("regulariser_index", torch.tensor(REGULARISERS.index(first.regulariser)))
        self.register_buffer("whiten", torch.tensor(first.whiten))
        self.register_buffer("text_weight", torch.tensor(first.text_weight))
        self.register_buffer("match_index", torch.tensor(TEXT_MATCHES.index(first.text_match)))
        self.register_buffer("pop_weight", torch.tensor(0.0))
        self.register_buffer("item_weight", torch.tensor(1.0))  # 0 at the popularity-alone point
        self.register_buffer("validation_looks", torch.tensor(0))
        self.register_buffer("log_counts", torch.zeros(n_items))  # (n_items,) log(1 + training interactions)
        self.register_buffer("raw_i", centred_units(profiles.items), persistent=False)  # (n_items, dim)
        self._gram: torch.Tensor | None = None  # X^T X of the pairs being fitted, while a search or solve needs it
        self._search: SearchBasis | None = None  # the search's decomposition and shared parts, until `apply`
        self.search_dtype = torch.float64  # what the grid is scored in (`use_search_precision`)
        self.use_profiles(profiles)

    @classmethod
    def from_config(cls, n_users: int, n_items: int, profiles: Profiles, config) -> "ReviewAwareEASE":
        """The model searching the space of its section (`pipeline.config.BertRSConfig`, params `models.bert_rs`)."""
        return cls(n_users, n_items, profiles, ReviewAwareSpace.from_config(config))

    @property
    def match(self) -> str:
        """The text match in use: "item_neighbours", "user_profile" or "user_profile_recent"."""
        return TEXT_MATCHES[int(self.match_index)]

    @property
    def regulariser(self) -> str:
        """The regulariser B was solved with: "ease" or "l3ae"."""
        return REGULARISERS[int(self.regulariser_index)]

    def units(self, whiten: bool | None = None, recent: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """(user, item) unit profiles, raw or whitened; `recent`: the recency-weighted user profiles.
        (n_users, d), (n_items, d)"""
        whiten = bool(self.whiten) if whiten is None else whiten
        if recent and self._profiles.recent_users is None:
            raise ValueError("the recency-weighted user profiles were not loaded "
                             "(pipeline.embeddings.recency.with_recent_users)")
        if not whiten:
            return (self.raw_recent if recent else self.raw_u), self.raw_i
        if self._white is None:
            self._white = tuple(t.to(self.raw_u.device) for t in whitened_units(self._profiles))
        if not recent:
            return self._white
        if self._white_recent is None:
            self._white_recent = whitened_units(self._profiles, self._profiles.recent_users)[0].to(self.raw_u.device)
        return self._white_recent, self._white[1]

    def use_profiles(self, profiles: Profiles) -> None:
        """The user profiles the text match reads from here on (the items' stay the cache's)."""
        device = self.raw_i.device
        self.register_buffer("raw_u", centred_units(profiles.users).to(device), persistent=False)  # (n_users, dim)
        recent = centred_units(profiles.recent_users).to(device) if profiles.recent_users is not None else None
        self.register_buffer("raw_recent", recent, persistent=False)  # (n_users, dim), or None
        self._profiles = profiles
        self._white: tuple[torch.Tensor, torch.Tensor] | None = None
        self._white_recent: torch.Tensor | None = None

    @property
    def unit_u(self) -> torch.Tensor:
        """The users' unit-length centred profiles, whitened where the setting whitens: (n_users, dim)."""
        return self.units()[0]

    @property
    def unit_i(self) -> torch.Tensor:
        """F, the items' unit-length centred profiles, whitened where the setting whitens: (n_items, dim)."""
        return self.units()[1]

    # ------------------------------------------------------------------------------------------------ fitting

    def fit(self, users: np.ndarray, items: np.ndarray) -> "ReviewAwareEASE":
        """Hold the training pairs and solve plain EASE at the first lambda (what the model scores with where there is
        no validation to choose on); `apply` re-solves at the setting chosen on validation."""
        self.ease.hold_pairs(users, items)
        self._hold_counts(items)
        self.solve(0.0, self.space.lambdas[0], "ease", self.space.whitening[0])
        return self

    def fit_on_validation(self, users: np.ndarray, items: np.ndarray,
                          validation: Callable[[], dict] | None) -> tuple[list[dict], int]:
        """With validation to choose on, hold the pairs only: the search decomposes the Gram and `apply` solves the
        chosen setting, so the plain solve `fit` makes would be thrown away (an n^3 solve at the paper's size)."""
        if validation is None:
            return super().fit_on_validation(users, items, validation)
        self.ease.hold_pairs(users, items)
        self._hold_counts(items)
        return [], 0

    def refit(self, users: np.ndarray, items: np.ndarray, choice: "Choice[Setting] | None") -> "ReviewAwareEASE":
        """The chosen setting solved once on these pairs (the profiles and text gram are the cache's, unchanged)."""
        if choice is None:
            return self.fit(users, items)
        self.ease.hold_pairs(users, items)
        self._hold_counts(items)
        self.apply(choice)
        return self

    def _hold_counts(self, items: np.ndarray) -> None:
        """The popularity term's log counts of the pairs being fitted; their gram is built when first needed."""
        self._search = None  # a search of other pairs' decomposition
        counts = torch.as_tensor(np.bincount(items, minlength=self.n_items), dtype=torch.float32)
        self.log_counts = torch.log1p(counts).to(self.raw_i.device)
        self._gram = None

    def gram(self) -> torch.Tensor:
        """X^T X of the pairs being fitted, built from them at the first call after new pairs or after the grid's
        eigendecomposition took it. (n_items, n_items) float64"""
        if self._gram is None:
            self._gram = self.ease.gram()
        return self._gram

    def solve(self, side_weight: float, ease_lambda: float | None = None, regulariser: str = "ease",
              whiten: bool | None = None, keep_gram: bool = True) -> None:
        """Set B to the closed form at these settings (side_weight 0, "ease": plain EASE). Memory: the old B is let
        go first, P = (G_a + lambda I)^-1 is built in the memory of one copy of the gram, and B (L3AE: one more n^2
        matrix) is formed from P in place; `keep_gram=False` lets the gram go once its copy is made (the final
        solve). At most three n_items^2 float64 matrices at once, where forming G_a, the identity and inv() held five
        or six."""
        ease_lambda = float(self.ease_lambda if ease_lambda is None else ease_lambda)
        whiten = bool(self.whiten) if whiten is None else whiten
        self.ease.B = torch.empty(0)
        gram = self.gram()
        system = gram.clone()
        if side_weight:  # G_a = X^T X + a m F F^T
            unit = self.units(whiten)[1].double()
            system.addmm_(unit, unit.T, alpha=side_weight * float(per_item_count(gram)))
        del gram
        if not keep_gram:
            self._gram = None
        p = ridge_inverse_(system, ease_lambda)  # in the system's memory
        del system
        if regulariser == "ease":
            b = ease_from_inverse_(p)
        else:  # B = B~ - P diag(diag(B~) / diag(P)), B~ = I - lambda P (I - S), with S in factored form
            prior = LowRankPrior(self.units(whiten)[1].double(), TEXT_PRIOR_LAMBDA)
            b = prior.complement_times(p).mul_(-ease_lambda)  # B~ - I
            b_tilde_diag = torch.diagonal(b) + 1.0
            b.sub_(p.mul_((b_tilde_diag / torch.diagonal(p))[None, :]))
            b.fill_diagonal_(0.0)
        del p
        self.ease.B = b.float()
        self.ease.ease_lambda = ease_lambda
        self.ease_lambda = torch.tensor(ease_lambda, dtype=torch.float64)
        self.side_weight = torch.tensor(float(side_weight))
        self.regulariser_index = torch.tensor(REGULARISERS.index(regulariser))
        self.whiten = torch.tensor(whiten)

    def search_basis(self) -> "SearchBasis":
        """The decomposition of X^T X the grid is computed from, with what the grid's passes share, made at the
        search's first call and kept until `apply` (a screened search asks twice); the gram itself is let go."""
        if self._search is None:
            gram, self._gram = self.gram(), None  # the decomposition overwrites it; the final solve builds it again
            per_item = per_item_count(gram)
            eig = self.ease.training_eigen(gram)
            del gram  # before a copy in another precision is made: two n^2 float64 matrices at most, as before
            if self.search_dtype != eig.v.dtype:
                self.ease.use_shared_eigen(None)  # the search makes its own copy; the float64 one can go
            self._search = SearchBasis(eig, per_item, self, self.search_dtype)
            del eig
        return self._search

    def use_search_precision(self, dtype: torch.dtype) -> None:
        """Score the grid in `dtype` from the next search on (`train.search_precision`); a search already begun in
        this precision keeps its decomposition."""
        if dtype != self.search_dtype:
            self.search_dtype = dtype
            self._search = None

    def item_model_grid(self, users: torch.Tensor, only: Container | None = None):
        """Yield ((whiten, side, lambda, regulariser), x_u B) for every grid point, for these users; B is never
        formed. One eigendecomposition of X^T X serves the whole grid: the text gram a m F F^T is a rank-d update,
        folded in by Woodbury's identity, and L3AE's prior S is EASE on the rank-d gram F F^T, applied in factored form
        (`LowRankPrior`), so past the one n^3 decomposition the grid costs one (b, n) x (n, n) product per lambda (x Q,
        shared by every whitening, side weight and regulariser at that lambda) and O(b n d) per point (the n^2 d
        products, Q F per whitening and lambda, are made once per search: `SearchBasis`). Lambda is the outer loop
        because of that product: with it inside, x Q was computed again for every (whitening, side weight), two thirds
        of bert_rs's search time at 17k items. The order the points come in is therefore not the order of simplicity;
        ties are settled by `grid_position`. `only`: these item models alone ((whitening, side, lambda, regulariser)
        tuples; the lambdas without one are skipped, x Q included).
        (b, n_items) each, in the search's type (`use_search_precision`)"""
        space = self.space
        self.ease.B = torch.empty(0)  # `apply` solves the chosen one
        basis = self.search_basis()
        x = self.ease.rows(users).to(basis.dtype)  # (b, n)
        eig, per_item = basis.eig, basis.per_item
        x_v = x @ eig.v  # (b, n)
        needs_q_f = space.with_prior or any(space.side_weights)
        # what is still asked for at each loop level: lambdas, (whiten, lambda) and (whiten, side, lambda)
        if only is not None:
            lambdas, whitened, sided = {m[2] for m in only}, {(m[0], m[2]) for m in only}, {m[:3] for m in only}

        for lam in space.lambdas:
            if only is not None and lam not in lambdas:
                continue
            x_q, q_diag = eig.times_inverse(x_v, lam), eig.inverse_diagonal(lam)  # x Q (b, n), diag Q (n,)
            for whiten in space.whitening:
                if only is not None and (whiten, lam) not in whitened:
                    continue
                unit, _, prior = basis.text(whiten)
                q_f = basis.q_f(whiten, lam) if needs_q_f else None  # Q F (n, d)
                x_q_f = None  # x Q F (b, d), shared by every side weight
                for side in space.side_weights:
                    if only is not None and (whiten, side, lam) not in sided:
                        continue
                    if side and x_q_f is None:
                        x_q_f = x_q @ unit
                    x_p, p_diag, p_f = with_side_gram(x_q, q_diag, q_f, unit, side * per_item,
                                                      with_p_f=space.with_prior, x_q_f=x_q_f)
                    for reg in space.regularisers:
                        if only is not None and (whiten, side, lam, reg) not in only:
                            continue
                        if reg == "ease":
                            yield (whiten, side, lam, reg), x - x_p / p_diag
                        else:
                            yield (whiten, side, lam, reg), l3ae_scores(x, x_p, p_diag, p_f, prior, lam)
            del x_q

    def use_shared_eigen(self, eigen: EigenGram | None) -> None:
        self.ease.use_shared_eigen(eigen)

    def candidate_count(self) -> int:
        """The settings `candidates` offers: every point of the space."""
        return len(self.space)

    def candidates(self, users: torch.Tensor,
                   only: Container | None = None) -> Iterator[tuple[Setting, torch.Tensor] | WeightedSums]:
        """Every setting of the space with its validation scores for `users`, popularity alone first when p has a
        grid, then in `item_model_grid`'s order (ties go by `grid_position`). Item-model parts are computed once per
        item model and text parts once per (whitening, match), lazily (one eigendecomposition serves the grid); the
        (text match, w, p) points of one item model come as one block of weighted sums of its parts, which the
        selector ranks a few users at a time.

        Parameters
        ----------
        users : Sorted validation users, (b,).
        only : The settings a screened search still scores; their item models, the text parts they weigh and
            the popularity-alone point alone are computed, and each block holds those settings alone.

        Yields
        ------
        (Setting, (b, n_items) scores) for popularity alone, else `WeightedSums` blocks whose parts are
        (b, n_items) (popularity (1, n_items)), in the search's type (`use_search_precision`).
        """
        dtype = self.search_dtype
        pop = standardise(self.log_counts[None, :].to(dtype))  # (1, n)
        unweighed = torch.zeros_like(pop)  # in place of a text part no candidate of the block weighs
        # each (whitening, text match) part made once for these users, at its first use: the grid's loops alternate
        # the whitening, and making them again at each turn cost more than keeping them ((b, n) each)
        text: dict[tuple[bool, str], torch.Tensor] = {}

        def text_part(whiten: bool, match: str) -> torch.Tensor:
            if (whiten, match) not in text:
                text[whiten, match] = standardise_(self.text_scores(users, match, whiten).to(dtype))
            return text[whiten, match]

        pop_alone = self.space.popularity_alone
        if pop_alone is not None and (only is None or pop_alone in only):
            yield pop_alone, pop.expand(len(users), -1)
        item_models = None if only is None else {s[:4] for s in only if s.item_weight}
        for item_model, item in self.item_model_grid(users, item_models):
            settings, weights = self.space.block(item_model)
            if only is not None:
                kept = [k for k, setting in enumerate(settings) if setting in only]
                settings, weights = [settings[k] for k in kept], [weights[k] for k in kept]
            weighed = [any(w[1 + j] for w in weights) for j in range(len(self.space.matches))]
            parts = [standardise_(item), *(text_part(item_model[0], match) if weighed[j] else unweighed
                                           for j, match in enumerate(self.space.matches)), pop]
            del item  # (b, n): standardised in place, in the block's parts
            yield WeightedSums(settings, parts, weights)

    def is_plain(self, setting: Setting) -> bool:
        return self.space.is_plain(setting)

    def simplicity(self, setting: Setting) -> tuple:
        return self.space.simplicity(setting)

    def grid_position(self, setting: Setting) -> tuple:
        return self.space.grid_position(setting)

    def apply(self, choice: "Choice[Setting]") -> None:
        """Re-solve B at the chosen setting and record it, with the number of looks that chose it."""
        chosen = choice.setting
        self._search = None  # n_items^2 floats the solve needs room for
        self.solve(chosen.side_weight, chosen.ease_lambda, chosen.regulariser, chosen.whiten, keep_gram=False)
        self.text_weight = torch.tensor(chosen.text_weight)
        self.match_index = torch.tensor(TEXT_MATCHES.index(chosen.text_match))
        self.pop_weight = torch.tensor(chosen.pop_weight)
        self.item_weight = torch.tensor(chosen.item_weight)
        self.validation_looks = torch.tensor(choice.looks)

    def choices(self) -> dict:
        return {"ease_lambda": round(float(self.ease_lambda), 6), "side_weight": round(float(self.side_weight), 6),
                "regulariser": self.regulariser, "whitening": bool(self.whiten), "text_match": self.match,
                "text_weight": round(float(self.text_weight), 6), "pop_weight": round(float(self.pop_weight), 6),
                "pop_only": float(self.item_weight) == 0.0, "validation_looks": int(self.validation_looks)}

    # ------------------------------------------------------------------------------------------------ scoring

    def text_scores(self, users: torch.Tensor, match: str | None = None, whiten: bool | None = None) -> torch.Tensor:
        """t_u for every item. (b,) -> (b, n_items)"""
        match = match or self.match
        if match in ("user_profile", "user_profile_recent"):
            unit_u, unit_i = self.units(whiten, recent=match == "user_profile_recent")
            return unit_u[users] @ unit_i.T
        unit_i = self.units(whiten)[1]
        x = self.ease.rows(users)  # (b, n_items)
        self_similarity = (unit_i * unit_i).sum(-1)  # K's diagonal, removed: an item is not its own neighbour
        return (x @ unit_i) @ unit_i.T - x * self_similarity

    def _parts_all(self, users: torch.Tensor) -> dict[str, torch.Tensor]:
        """Weighted standardised parts of the score for every item. (b, n_items) each"""
        parts = {"item_model": self.item_weight * standardise(self.ease.score_all(users)),
                 "text_match": self.text_weight * standardise(self.text_scores(users))}
        parts["popularity"] = self.pop_weight * standardise(self.log_counts[None, :]).expand(len(users), -1)
        return parts

    def score_parts_all(self, users: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every score part for every item; they sum to `score_all`. (b,) -> {name: (b, n_items)}"""
        return self._parts_all(users)

    def score_all(self, users: torch.Tensor) -> torch.Tensor:
        parts = self._parts_all(users)
        return parts["item_model"] + parts["text_match"] + parts["popularity"]

    def score(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        return score_via_all(self, users, items)

    def score_parts(self, users: torch.Tensor, items: torch.Tensor) -> dict[str, torch.Tensor]:
        distinct, row = torch.unique(users, return_inverse=True)
        return {name: part[row, items] for name, part in self._parts_all(distinct).items()}
