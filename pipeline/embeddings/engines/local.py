"""The local encoding engine: every missing shard, in order, in this process (`embed.engine: local`).

It is also the reference the Ray engine is held to: both call `writer.encode_and_write_shard`, which calls the one
encoding function (`pipeline.text.encode.encode_pooled`: length-sorted batches, dynamic padding), so the two
engines differ only in who calls it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

from pipeline.embeddings.writer import EncodeFn, ShardPlan, encode_and_write_shard, write_embedding_caches


class LocalEngine:
    """The encoding engine that writes every missing shard in turn, in this process.

    Parameters
    ----------
    encode : texts -> (n, dim) float32 vectors, or {pooling: (n, dim)} for several poolings from one forward pass.
    on_shard : Called with k after shard k is on disk (tests stop a run here).
    """

    def __init__(self, encode: EncodeFn, on_shard: Callable[[int], None] | None = None):
        self.encode, self.on_shard = encode, on_shard  # on_shard(k): after shard k is on disk (tests stop here)

    def run(self, plan: ShardPlan, run_dir: Path, todo: list[int], poolings: Sequence[str], dim: int, bar) -> None:
        """Encode and write the shards `todo` of `plan` into `run_dir`, in order.

        Parameters
        ----------
        plan : The shard boundaries over the prepared reviews.
        run_dir : The resumable work folder the shards are written to.
        todo : The numbers of the shards still missing.
        poolings : The poolings written, one vector column each.
        dim : The vector dimension the encoder must return.
        bar : A progress bar, advanced by each shard's row count.
        """
        for k in todo:
            bar.update(encode_and_write_shard(plan, run_dir, k, self.encode, poolings, dim))
            if self.on_shard is not None:
                self.on_shard(k)


def write_embedding_cache(out: str | Path, reviews_path: str | Path, encode: EncodeFn, *, meta: dict,
                          on_shard: Callable[[int], None] | None = None, engine=None, **kwargs) -> dict:
    """One cache, one pooling: `encode(texts) -> (n, dim) float32`, run here unless another `engine` is given.

    `on_shard(k)` is called after shard k is safely on disk (tests use it to simulate a kill).
    """
    engine = engine if engine is not None else LocalEngine(encode, on_shard)
    pooling = meta["pooling"]
    return write_embedding_caches({pooling: out}, reviews_path, engine, metas={pooling: meta}, **kwargs)[pooling]
