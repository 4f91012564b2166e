"""Peak-memory estimates for stage two, checked against a budget BEFORE anything large is allocated.

Dense EASE and the default bert_rs hold a few n_items x n_items float64 matrices at once (the gram, a copy it is
solved in, B; the search's eigenvectors), so their memory grows with the square of the catalogue, and bert_rs's
validation search adds a few users x items float64 matrices (the held-out users' rows, their products with the
eigenvectors, each setting's scores and text parts). Measured at the paper's size (benchmarks/results/paper_scale.md,
3,764 users and 17,033 items): `train --run ease` 3.85 GB peak RSS and `train --run bert_rs` 9.92 GB, since the
solves work in place (pipeline/ranking/models/baselines.py: `ridge_inverse_`, `EigenGram`); before, 10.2 and 13.0 GB.
Past the budget such a run would be killed by the OS half-way; this module lets it stop first, with a message
naming the setting to change and the scalable alternative (pipeline/ranking/models/scalable.py, memory
O(n_items x rank)).

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
BUDGET_SETTING = "train.memory_budget_gb"


@dataclass(frozen=True)
class DenseFootprint:
    """What a dense closed-form fit holds at its peak, beyond the interpreter and the profiles."""

    matrices: float  # n_items^2 float64 matrices alive at once (fit, search and final fit)
    user_item_bytes: float  # bytes per users x items cell: training rows, and a search's rows, products and parts


# EASE: the gram and, for a lambda grid, its eigenvectors (one lambda: 1.5); the training rows the gram is built from
# (float32 + float64)
EASE_FOOTPRINT = DenseFootprint(matrices=2.0, user_item_bytes=12.0)
# review-aware EASE (dense bert_rs): the gram, its solve copy and B; the validation search's rows, products and score
# parts (about five float64 users x items matrices)
REVIEW_EASE_FOOTPRINT = DenseFootprint(matrices=3.0, user_item_bytes=52.0)
RESIDENT_KINDS = ("dense", "low_rank", "embeddings")  # what a loaded model holds while it is evaluated


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


def dense_bytes(shape: Shape, footprint: DenseFootprint = EASE_FOOTPRINT) -> float:
    """Dense EASE / bert_rs fit: the n_items^2 float64 matrices, the users x items ones (the training matrix the
    gram is built from; bert_rs's validation search), and the text profiles. Calibrated on the paper-size peaks
    (module docstring): the estimates read 5.4 and 10.0 GB there."""
    matrices = footprint.matrices * 8.0 * shape.n_items**2
    user_rows = footprint.user_item_bytes * shape.n_users * shape.n_items
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


def counts_bytes(shape: Shape) -> float:
    """A counting model (popularity): the counts and the CSR training matrix."""
    return BASE_BYTES + 8.0 * 3 * shape.nnz + 4.0 * shape.n_items


def evaluate_bytes(resident_kind: str, shape: Shape, batch_users: int, chunk_cells: int, rank: int = 128) -> float:
    """Full-ranking evaluation: the loaded model (`resident_kind` of RESIDENT_KINDS: dense B twice while safetensors
    hands it over, a low-rank A, or embeddings) plus one chunk of scores, its competitor mask and the positives'
    gathered rows."""
    if resident_kind == "dense":
        resident = 2 * 4.0 * shape.n_items**2
    elif resident_kind == "low_rank":
        resident = 4.0 * shape.n_items * rank * 2
    else:
        resident = neural_bytes(shape) - BASE_BYTES
    cells = min(chunk_cells, batch_users * shape.n_items)
    return BASE_BYTES + resident + 4.0 * (shape.n_users + shape.n_items) * shape.dim + 10.0 * cells


def dense_fits(n_items: int, budget_gb: float | None, n_users: int = 0, nnz: int = 0, dim: int = 0,
               footprint: DenseFootprint = REVIEW_EASE_FOOTPRINT) -> bool:
    """Whether the dense closed-form model fits the budget (None: the memory available now)."""
    return dense_bytes(Shape(n_users, n_items, nnz, dim), footprint) <= budget_bytes(budget_gb)


def check_fit(need: float, what: str, shape: Shape, budget_gb: float | None, advice: str = "") -> float:
    """Stop before fitting when the estimate exceeds the budget.

    Parameters
    ----------
    need
        The fit's estimated peak bytes (the registry's estimate for the model and its settings).
    what
        The fit, as the message names it ("run 'ease' (model ease)").
    shape
        The data's shape, quoted in the message.
    budget_gb
        `train.memory_budget_gb` (None: the memory available now).
    advice
        The settings that would make the fit smaller, appended after the budget's own setting ("; or ...").

    Returns
    -------
    float
        `need`, when it fits.

    Raises
    ------
    MemoryBudgetError
        Naming the estimate, the budget and the settings to change; nothing has been allocated or written.
    """
    have = budget_bytes(budget_gb)
    if need <= have:
        return need
    source = f"{BUDGET_SETTING} = {budget_gb:g} GB" if budget_gb is not None else \
        f"the {have / GB:.1f} GB available now ({BUDGET_SETTING} is null)"
    raise MemoryBudgetError(
        f"{what} on {shape.n_items:,} items, {shape.n_users:,} users and {shape.nnz:,} training interactions needs "
        f"about {need / GB:.1f} GB, more than {source}. Nothing was written. Raise {BUDGET_SETTING} if the "
        f"machine has the memory{advice}."
    )
