"""Peak-memory estimates for stage two, checked against a budget BEFORE anything large is allocated.

Dense EASE and the default bert_rs hold a few n_items x n_items float64 matrices at once (the gram, a copy it is
solved in, B; the search's eigenvectors), so their memory grows with the square of the catalogue, and bert_rs's
validation search adds a few users x items float64 matrices (the held-out users' rows, their products with the
eigenvectors, each setting's scores and text parts). Measured at the paper's size (benchmarks/results/paper_scale.md,
3,764 users and 17,033 items): `train --run ease` 3.85 GB peak RSS and `train --run bert_rs` 9.92 GB, since the
solves work in place (pipeline/ranking/models/baselines.py: `ridge_inverse_`, `EigenGram`); before, 10.2 and 13.0 GB.
Past the budget such a run would be killed by the OS half-way; this module lets it stop first, with a message
naming the setting to change and the scalable alternative (pipeline/ranking/models/scalable.py, memory O(n_items x rank)).

The estimates are upper-bound style (bytes of the largest arrays alive together plus a fixed interpreter
overhead), not exact accounting; tests/test_memory.py checks their scaling, and benchmarks/scale.py measures
peak RSS next to them.
"""

from __future__ import annotations

from dataclasses import dataclass

import psutil

from pipeline.config import ConfigError

GB = 1024**3
BASE_BYTES = 0.4 * GB  # python + torch + numpy + the prepared data tables, measured ~0.35 GB on the sample
# n_items^2 float64 matrices alive at the peak of fit + selection + final fit: ease's lambda grid holds the gram and
# its eigenvectors (one lambda: 1.5); bert_rs's fit holds the gram, its solve copy and B
DENSE_MATRICES = {"ease": 2.0, "bert_rs": 3.0}
# bytes per user x item cell: the training rows the gram is built from (float32 + float64), and for bert_rs the
# validation search's rows, products and score parts (about five float64 users x items matrices)
USER_ITEM_BYTES = {"ease": 12.0, "bert_rs": 52.0}
NEURAL_MODELS = ("mf", "gmf", "mlp", "neumf", "bert_rs_neural", "bert_rs_paper", "semantic_only")
BUDGET_SETTING = "train.memory_budget_gb"


class MemoryBudgetError(ConfigError):
    """A stage would need more memory than its budget; raised before the allocation."""


@dataclass(frozen=True)
class Shape:
    """What memory depends on: the catalogue, the users, the training interactions and the profile width."""

    n_users: int
    n_items: int
    nnz: int  # training interactions
    dim: int = 0  # profile width (text models)


def budget_bytes(budget_gb: float | None) -> float:
    """The budget in bytes: the configured one, or the memory available now (psutil) when it is None."""
    if budget_gb is None:
        return float(psutil.virtual_memory().available)
    return budget_gb * GB


def dense_bytes(shape: Shape, model: str = "ease") -> float:
    """Dense EASE / bert_rs fit: the n_items^2 float64 matrices, the users x items ones (the training matrix the
    gram is built from; bert_rs's validation search), and the text profiles. Calibrated on the paper-size peaks
    (module docstring): the estimates read 5.4 and 10.0 GB there."""
    matrices = DENSE_MATRICES.get(model, DENSE_MATRICES["ease"]) * 8.0 * shape.n_items**2
    user_rows = USER_ITEM_BYTES.get(model, USER_ITEM_BYTES["ease"]) * shape.n_users * shape.n_items
    return BASE_BYTES + matrices + user_rows + 4.0 * (shape.n_users + shape.n_items) * shape.dim


def scalable_bytes(shape: Shape, rank: int) -> float:
    """Low-rank item model, calibrated on peaks measured from 50k to 1M items, ranks 32-128, profile widths 32-384
    and 2k-20k users (benchmarks/results/scale.md sets each measured peak beside it): A with its unit rows, gradient
    and Adam moments (4.5 copies of n_items x rank), one more copy where the passes are chosen on validation (the
    best pass's A, kept while later passes train), the profiles as read plus their centred unit copy, about 3 KB per
    item of text-start SVD and index work, the CSR training matrix and 0.1 GB of workspace. The loss is computed in
    closed form from (batch_users, rank) products, so the batch size does not change the peak."""
    factors = 5.5 * 4 * shape.n_items * rank
    profiles = 2 * 4.0 * (shape.n_users + shape.n_items) * shape.dim
    csr = 8.0 * (2 * shape.nnz + shape.n_users)
    return BASE_BYTES + 0.1 * GB + factors + profiles + 3300.0 * shape.n_items + csr


def neural_bytes(shape: Shape, factors: int = 32, num_negatives: int = 1) -> float:
    """Embedding models (MF, NCF, fusion heads): GMF + MLP embeddings with gradients and Adam moments, one epoch
    of (user, positive, negatives) int64 arrays plus their shuffled copies, and the profiles."""
    embeddings = 4.0 * 4 * (shape.n_users + shape.n_items) * 3 * factors
    epoch = 8.0 * 2 * shape.nnz * (2 + num_negatives) + 8.0 * 3 * shape.nnz
    return BASE_BYTES + embeddings + epoch + 4.0 * (shape.n_users + shape.n_items) * shape.dim * 2


def fit_bytes(model: str, shape: Shape, factors: int = 32, num_negatives: int = 1, rank: int = 128) -> float:
    """Estimated peak bytes of fitting `model` (a name of pipeline.config.MODELS, or "scalable")."""
    if model in DENSE_MATRICES:
        return dense_bytes(shape, model)
    if model == "scalable":
        return scalable_bytes(shape, rank)
    if model in NEURAL_MODELS:
        return neural_bytes(shape, factors, num_negatives)
    return BASE_BYTES + 8.0 * 3 * shape.nnz + 4.0 * shape.n_items  # pop: counts and the CSR


def evaluate_bytes(model: str, shape: Shape, batch_users: int, chunk_cells: int, rank: int = 128) -> float:
    """Full-ranking evaluation: the loaded model (dense B twice while safetensors hands it over) plus one chunk of
    scores, its competitor mask and the positives' gathered rows."""
    if model in DENSE_MATRICES:
        resident = 2 * 4.0 * shape.n_items**2
    elif model == "scalable":
        resident = 4.0 * shape.n_items * rank * 2
    else:
        resident = neural_bytes(shape) - BASE_BYTES
    cells = min(chunk_cells, batch_users * shape.n_items)
    return BASE_BYTES + resident + 4.0 * (shape.n_users + shape.n_items) * shape.dim + 10.0 * cells


def dense_fits(n_items: int, budget_gb: float | None, n_users: int = 0, nnz: int = 0, dim: int = 0,
               model: str = "bert_rs") -> bool:
    """Whether the dense closed-form model fits the budget (None: the memory available now)."""
    return dense_bytes(Shape(n_users, n_items, nnz, dim), model) <= budget_bytes(budget_gb)


def check_fit(model: str, shape: Shape, budget_gb: float | None, run: str | None = None, **sizes) -> float:
    """Stop with a `MemoryBudgetError` naming the setting to change when fitting would exceed the budget; returns
    the estimate in bytes otherwise."""
    need = fit_bytes(model, shape, **sizes)
    have = budget_bytes(budget_gb)
    if need <= have:
        return need
    what = f"run {run!r} (model {model})" if run else f"model {model}"
    source = f"{BUDGET_SETTING} = {budget_gb:g} GB" if budget_gb is not None else \
        f"the {have / GB:.1f} GB available now ({BUDGET_SETTING} is null)"
    advice = {
        "ease": "; past this size use bert_rs with models.bert_rs.solver: scalable (a low-rank item model, "
                "memory O(n_items x rank))",
        "bert_rs": "; or set models.bert_rs.solver: scalable (or auto), the low-rank item model whose memory is "
                   "O(n_items x rank)",
        "scalable": "; or lower models.bert_rs.scalable_rank",
    }.get(model, f"; or lower models.{model}.factors / models.{model}.num_negatives")
    raise MemoryBudgetError(
        f"{what} on {shape.n_items:,} items, {shape.n_users:,} users and {shape.nnz:,} training interactions needs "
        f"about {need / GB:.1f} GB, more than {source}. Nothing was written. Raise {BUDGET_SETTING} if the "
        f"machine has the memory{advice}."
    )
