"""The contract of `data/gram/`: work done once per prepared data and reused by every dense closed-form run.

    eigen.npz    s (n_items,) and V (n_items, n_items), float64: the eigendecomposition X^T X = V diag(s) V^T of the
                 training pairs' Gram, as `EigenGram` computes it (LAPACK's MRRR driver)
    meta.json    the prepared data's fingerprint, the training pairs' fingerprint, n_items, and whether the
                 decomposition was written (a catalogue past `train.memory_budget_gb` gets none: its dense runs
                 cannot fit either, and bert_rs's `solver: auto` goes scalable)

Every dense bert_rs run (three in the default DAG: the default, the pooler cache and the shuffled ablation) and an
`ease` run with a lambda grid searches from this one decomposition instead of taking its own, the n^3 step of their
searches (`bertrs gram` writes it; `bertrs train --gram data/gram` reads it). A run uses it only when it was made
from the very pairs the run fits (the fingerprint of its training pairs): a benchmark that thins the training data,
or the final fit on training + validation pairs, decomposes afresh. The decomposition read back equals the one a
run would take itself, bit for bit, so choices and weights do not move (tests/ranking/test_shared_gram.py).
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np
import torch

from pipeline.data.prepared import PreparedData
from pipeline.io import DataError, atomic_dir, read_json, write_json
from pipeline.ranking.models.baselines import EASE, EigenGram
from pipeline.ranking.training.memory import GB, budget_bytes

log = logging.getLogger(__name__)

EIGEN_FILE = "eigen.npz"
META_FILE = "meta.json"
# the decomposition holds the Gram and V at its peak, and the file is read back as V beside a run's own matrices
EIGEN_MATRICES = 2


def pairs_fingerprint(users: np.ndarray, items: np.ndarray) -> str:
    """A digest of (user, item) pairs in the order given: which pairs a decomposition was made from.

    Parameters
    ----------
    users, items
        Index arrays of the same length.

    Returns
    -------
    str
        16 hex digits.
    """
    digest = hashlib.sha256()
    for array in (users, items):
        digest.update(np.ascontiguousarray(array, dtype=np.int64).tobytes())
    return digest.hexdigest()[:16]


def eigen_bytes(n_items: int) -> float:
    """Peak bytes of decomposing an n_items^2 float64 Gram in place (the Gram and V)."""
    return EIGEN_MATRICES * 8.0 * n_items * n_items


def write_shared_gram(data: PreparedData, out: str | Path, memory_budget_gb: float | None = None) -> dict:
    """Decompose the training pairs' Gram once and write `out` (replaced as a whole).

    Parameters
    ----------
    data
        The prepared data; only its training split is read.
    out
        The output folder, `data/gram`.
    memory_budget_gb
        `train.memory_budget_gb` (None: the memory available now, as the runs read it): past it the decomposition is
        skipped and meta.json says why.

    Returns
    -------
    dict
        What meta.json holds.
    """
    needed, have = eigen_bytes(data.n_items), budget_bytes(memory_budget_gb)
    meta = {"data_fingerprint": data.fingerprint, "pairs": "train",
            "pairs_fingerprint": pairs_fingerprint(data.train.users, data.train.items), "n_items": data.n_items,
            "eigen": None}
    with atomic_dir(out) as tmp:
        if needed > have:
            budget = "the memory available" if memory_budget_gb is None else f"{memory_budget_gb:g} GB"
            meta["skipped"] = (f"the decomposition needs about {needed / GB:.1f} GB, more than {budget} "
                               "(train.memory_budget_gb); the dense runs do not fit either")
        else:
            ease = EASE(data.n_users, data.n_items)
            ease.hold_pairs(data.train.users, data.train.items)
            eigen = EigenGram(ease.gram())
            np.savez(tmp / EIGEN_FILE, s=eigen.s.numpy(), v=eigen.v.numpy())
            meta["eigen"] = EIGEN_FILE
        write_json(tmp / META_FILE, meta)
    return meta


def read_shared_eigen(folder: str | Path, data: PreparedData, users: np.ndarray, items: np.ndarray) -> EigenGram | None:
    """The shared decomposition, when it was made from exactly these pairs.

    Parameters
    ----------
    folder
        A `data/gram` folder.
    data
        The prepared data the run reads: the folder must have been written from it.
    users, items
        The pairs the run fits.

    Returns
    -------
    EigenGram or None
        None where the folder holds no decomposition (past the memory budget) or one of other pairs: the run then
        decomposes its own Gram.

    Raises
    ------
    DataError
        The folder is not a shared-gram folder, or was written from other prepared data.
    """
    folder = Path(folder)
    if not (folder / META_FILE).is_file():
        raise DataError(f"{folder}: not a shared-gram folder ({META_FILE} missing; run bertrs gram first)")
    meta = read_json(folder / META_FILE)
    if meta.get("data_fingerprint") != data.fingerprint:
        raise DataError(f"{folder}: written from prepared data {meta.get('data_fingerprint')}, but {data.root} has "
                        f"fingerprint {data.fingerprint}; rerun bertrs gram")
    if meta.get("eigen") is None:
        log.info("%s holds no decomposition (%s): the run decomposes nothing shared", folder, meta.get("skipped"))
        return None
    if meta["pairs_fingerprint"] != pairs_fingerprint(users, items):
        log.info("%s was made from other pairs than this fit's: decomposing afresh", folder)
        return None
    with np.load(folder / meta["eigen"]) as stored:
        eigen = EigenGram.from_parts(torch.from_numpy(stored["s"]), torch.from_numpy(stored["v"]))
    log.info("searching from the decomposition in %s (%d items), not taking one", folder, meta["n_items"])
    return eigen
