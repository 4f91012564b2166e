"""The Ray encoding engine (`embed.engine: ray`): missing shards encoded by an actor pool through Ray Data.

The pattern of Ray's batch-inference guide: a callable class whose `__init__` loads the encoder once per actor and whose
`__call__` maps a batch to a batch, run with `ds.map_batches(Cls, compute=ActorPoolStrategy(...), num_gpus=...)`. Here a
row of the dataset is one shard (its number and source row range), not one review: the actor reads those rows of the
prepared reviews, encodes them with the same function the local engine calls and writes the shard as Parquet
(atomically). Fixed shard boundaries keep the review order and make a killed run resume from finished shards; the driver
then assembles the cache (profiles, FAISS index, provenance) exactly as for the local engine. Workers must see the
prepared folder and the run folder at the same paths (one machine, or a shared file system).

    ray start --head                          # once, on the head node (workers: ray start --address HEAD:6379)
    embed.engine: ray, embed.ray.address: auto   # in params.yaml; null starts a local Ray in this process
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

from pipeline.embeddings.writer import EncodeFn, ShardPlan, encode_and_write_shard
from pipeline.io import DataError

RAY_EXTRA_MESSAGE = "embed.engine ray needs Ray Data: pip install '.[ray]' (or pip install 'ray[data]')"


def import_ray():
    """The `ray` module, with `ray.data` imported; raises `DataError` with the install hint when Ray Data is missing."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise DataError(RAY_EXTRA_MESSAGE) from None
    return ray


class ShardEncoder:
    """A Ray actor: loads the encoder once, then encodes and writes whole shards."""

    def __init__(self, load: Callable[[], EncodeFn], plan: ShardPlan, run_dir: str, poolings: Sequence[str],
                 dim: int, threads: int):
        import torch

        torch.set_num_threads(max(1, threads))
        self.encode, self.plan, self.run_dir = load(), plan, Path(run_dir)
        self.poolings, self.dim = list(poolings), dim

    def __call__(self, batch: dict) -> dict:
        rows = [encode_and_write_shard(self.plan, self.run_dir, int(k), self.encode, self.poolings, self.dim)
                for k in batch["shard"]]
        return {"shard": batch["shard"], "rows": rows}


class RayEngine:
    """The encoding engine that writes the missing shards on a Ray Data actor pool, one shard per task.

    Parameters
    ----------
    load : Returns the encode function; pickled to the actors and called once in each.
    address : The Ray cluster to join ("auto" or host:port), unless Ray is already initialised; None: `ray.init()`
        with no address (a local Ray, or the cluster RAY_ADDRESS names).
    num_actors : The most actors encoding at the same time (the pool starts with one).
    num_cpus_per_actor, num_gpus_per_actor : What each actor reserves; its torch threads are its CPUs.
    on_shard : Called on the driver with k as shard k is reported finished.
    """

    def __init__(self, load: Callable[[], EncodeFn], *, address: str | None = None, num_actors: int = 2,
                 num_cpus_per_actor: float = 1.0, num_gpus_per_actor: float = 0.0,
                 on_shard: Callable[[int], None] | None = None):
        """`load()` returns the encode function; it is pickled to the actors and called once in each."""
        self.load, self.address, self.num_actors = load, address, num_actors
        self.num_cpus, self.num_gpus, self.on_shard = num_cpus_per_actor, num_gpus_per_actor, on_shard

    def run(self, plan: ShardPlan, run_dir: Path, todo: list[int], poolings: Sequence[str], dim: int, bar) -> None:
        """Encode and write the shards `todo` of `plan` into `run_dir` on the actor pool, returning once all are
        written.

        Parameters
        ----------
        plan : The shard boundaries over the prepared reviews; workers must see its reviews file and `run_dir` at the
            same paths.
        run_dir : The resumable work folder the shards are written to.
        todo : The numbers of the shards still missing.
        poolings : The poolings written, one vector column each.
        dim : The vector dimension the encoder must return.
        bar : A progress bar, advanced by each shard's row count as shards finish.
        """
        ray = import_ray()
        if not ray.is_initialized():
            ray.init(address=self.address, include_dashboard=False, log_to_driver=False)
        context = ray.data.DataContext.get_current()
        context.execution_options.preserve_order = True
        context.enable_progress_bars = False
        shards = ray.data.from_items([{"shard": k} for k in todo], override_num_blocks=len(todo))
        encoded = shards.map_batches(
            ShardEncoder,
            fn_constructor_args=(self.load, plan, str(run_dir), list(poolings), dim, int(self.num_cpus)),
            batch_size=1,
            # start with the CPUs free now and grow to N actors
            compute=ray.data.ActorPoolStrategy(min_size=1, max_size=min(self.num_actors, len(todo))),
            num_cpus=self.num_cpus,
            num_gpus=self.num_gpus,
        )
        rows = iter(encoded.iter_rows())
        try:
            for row in rows:  # as shards finish: progress, and the tests' stop hook
                bar.update(int(row["rows"]))
                if self.on_shard is not None:
                    self.on_shard(int(row["shard"]))
        finally:
            close = getattr(rows, "close", None)
            if close is not None:  # an interrupted driver stops its actor pool now, freeing its CPUs for a rerun
                close()
