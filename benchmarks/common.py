"""What the benchmarks share, so that no benchmark imports another: how work is measured, how a long study resumes,
and the few helpers several studies read.

    with PeakRSS() as rss: work()                    # in this process: rss.peak_mb (absolute), rss.growth_mb
    run = run_measured(command, cwd=..., log=...)    # a command: run.seconds, run.cpu_seconds, run.peak_mb
    ledger = Ledger(work / "runs.jsonl")             # the resume point: one JSON line per finished unit of work
    row = ledger.get_or_run("digital_music|50%|ease", lambda: fit_and_score(...))

Measuring. Both sample the RSS of the process and every descendant (a bertrs under dvc, Ray's workers, DataLoader
workers) every `interval` seconds, so a peak shorter than the interval can be missed; CPU seconds are those of
finished child processes (`RUSAGE_CHILDREN`), which hardly move when other jobs share the cores, where wall seconds
do.

Resuming. A benchmark that runs for hours on a small machine gets interrupted; rerun with the same work folder, it
skips every key already in the ledger. Each line is flushed and fsynced before the next unit starts, and a torn last
line (a kill -9 mid-write) is dropped on reading, so that unit is simply done again.
"""

from __future__ import annotations

import dataclasses
import json
import os
import resource
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np
import psutil
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.config.ranking import BertRSConfig, DenseSearchConfig
from pipeline.data.prepare import prepare_dataset
from pipeline.data.prepared import PreparedData, load_prepared, load_reviews
from pipeline.embeddings.build import build_caches
from pipeline.embeddings.cache import load_review_embeddings
from pipeline.embeddings.engines.local import write_embedding_cache
from pipeline.io import read_json
from pipeline.ranking.selection.spaces import ReviewAwareSpace, Setting

if TYPE_CHECKING:
    from pipeline.config import Params

# ------------------------------------------------------------------------------------------------ data

REPO = Path(__file__).resolve().parents[1]
# the shared data sets sit beside the repository; BERTRS_SHARED_DATA points elsewhere (e.g. from a worktree)
SHARED_DATA = Path(os.environ.get("BERTRS_SHARED_DATA", REPO.parent / "shared" / "data"))
DATASETS = {
    # the bundled sample is the shared Digital Music file itself, so it is one dataset here, not two
    "digital_music": REPO / "data" / "sample" / "reviews_Digital_Music_5.first6907.json.gz",
    "all_beauty": SHARED_DATA / "amazon2018" / "All_Beauty_5.json.gz",
    "amazon_fashion": SHARED_DATA / "amazon2018" / "AMAZON_FASHION_5.json.gz",
    "gift_cards": SHARED_DATA / "amazon2018" / "Gift_Cards_5.json.gz",
}


# ------------------------------------------------------------------------------------------------ the shared sets
# quality.py's prepared data and embedding caches, per dataset and protocol under one work folder (build/quality):
# other studies of the same rows read them from there instead of preparing and encoding again

PROTOCOLS = ("leave_one_out", "random")


def mean_cache_of(params: Params) -> str:
    return "minilm_mean" if "minilm_mean" in params.encoders else next(iter(params.encoders))


def prepared_for(work: Path, dataset: str, protocol: str, params: Params) -> PreparedData:
    out = work / dataset / protocol / "prepared"
    if not (out / "stats.json").is_file():
        config = dataclasses.replace(params.prepare, protocol=protocol, input=[str(DATASETS[dataset])])
        prepare_dataset(config, config.input, out)
    return load_prepared(out)


def caches_for(work: Path, dataset: str, protocol: str, params: Params, data: PreparedData,
               encoders: dict[str, str]) -> dict[str, Path]:
    """One cache per encoder name; names that share weights (the same encoder folder) share one forward pass, and
    a cache another protocol already built for the same reviews lends its review vectors (only the profiles, which
    follow the split, are computed again)."""
    caches = {name: work / dataset / protocol / "embeddings" / name for name in encoders}
    for name in encoders:
        donor = next((work / dataset / other / "embeddings" / name for other in PROTOCOLS if other != protocol
                      and (work / dataset / other / "embeddings" / name / "meta.json").is_file()), None)
        if donor is not None and not (caches[name] / "meta.json").is_file():
            reuse_review_vectors(donor, data, params.embed_for(name), caches[name])
    todo = [name for name in encoders if not (caches[name] / "meta.json").is_file()]
    for encoder_dir in dict.fromkeys(encoders[name] for name in todo):
        names = [name for name in todo if encoders[name] == encoder_dir]
        build_caches(data.root, encoder_dir, {n: params.embed_for(n) for n in names}, {n: caches[n] for n in names})
    return caches


def reuse_review_vectors(donor: Path, data: PreparedData, config, out: Path) -> None:
    """A cache for `data` from another protocol's cache of the same reviews and encoder: the review vectors are
    looked up by text instead of encoded again (the encoder is deterministic), the profiles follow this split."""
    table, vectors = load_review_embeddings(donor)
    reviews = load_reviews(data.root, columns=["review_id", "text"])
    if not np.array_equal(np.sort(table.column("review_id").to_numpy()),
                          np.sort(reviews.column("review_id").to_numpy())):
        raise RuntimeError(f"{donor}: another set of reviews; cannot lend its vectors to {out}")
    by_id = dict(zip(table.column("review_id").to_pylist(), vectors))
    by_text = dict(zip(reviews.column("text").to_pylist(), (by_id[r] for r in reviews.column("review_id").to_pylist())))
    meta = {k: v for k, v in read_json(donor / "meta.json").items() if k not in ("n_users", "n_items", "n_reviews")}
    meta["data_fingerprint"] = data.fingerprint
    write_embedding_cache(out, data.root / "reviews.parquet", lambda texts: np.stack([by_text[t] for t in texts]),
                          meta=meta, n_users=data.n_users, n_items=data.n_items, shard_size=config.shard_size,
                          normalize_profiles=config.normalize_profiles, index_metric=config.index_metric,
                          progress=False)


# ------------------------------------------------------------------------------------------------ measuring

MIB = 2**20


def tree_rss(process: psutil.Process) -> int:
    """Bytes resident in `process` and its descendants now; a process that exits while being read counts 0."""
    total = 0
    try:
        members = [process, *process.children(recursive=True)]
    except psutil.Error:
        return 0
    for member in members:
        try:
            total += member.memory_info().rss
        except psutil.Error:
            pass
    return total


class PeakRSS:
    """Samples this process tree's RSS in a thread while the block runs: `peak_mb` is the highest total seen,
    `growth_mb` its rise over the level at entry (what the work itself added)."""

    def __init__(self, interval: float = 0.05) -> None:
        self.interval = interval

    def __enter__(self) -> "PeakRSS":
        self.process, self.stopped = psutil.Process(), threading.Event()
        self.start = self.peak = tree_rss(self.process)
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self) -> None:
        while not self.stopped.wait(self.interval):
            self.peak = max(self.peak, tree_rss(self.process))

    def __exit__(self, *exc) -> None:
        self.stopped.set()
        self.thread.join()
        self.peak = max(self.peak, tree_rss(self.process))
        self.peak_mb = self.peak / MIB
        self.growth_mb = (self.peak - self.start) / MIB


@dataclass(frozen=True)
class Measured:
    seconds: float  # wall
    cpu_seconds: float  # user + system of the command's whole process tree
    peak_bytes: int  # the tree's highest sampled RSS

    @property
    def peak_mb(self) -> float:
        return self.peak_bytes / MIB

    @property
    def peak_gb(self) -> float:
        return self.peak_bytes / 2**30


def children_cpu_seconds() -> float:
    """User + system CPU of every finished child process tree of this process."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def stop_tree(process: psutil.Process, grace: float = 5.0) -> None:
    """End `process` and every descendant (terminate, then kill what is left after `grace` seconds)."""
    try:
        members = [*process.children(recursive=True), process]
    except psutil.Error:
        return
    for member in members:
        try:
            member.terminate()
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(members, timeout=grace)
    for member in alive:
        try:
            member.kill()
        except psutil.Error:
            pass


def run_measured(command: list[str], *, cwd: Path | None = None, env: dict | None = None, log: Path | None = None,
                 interval: float = 0.1) -> Measured:
    """Run `command` to the end, sampling its tree's RSS. Its output goes to `log` (appended) or is kept for the
    error: a non-zero exit raises RuntimeError naming the command and ending with its last output. Interrupted
    (Ctrl-C, or SIGTERM where the caller turns it into an exception), it stops the command's whole tree first: a
    `dvc repro` left behind keeps training and shares the cores with whatever is measured next."""
    started, cpu_before = time.perf_counter(), children_cpu_seconds()
    out = open(log, "a") if log else subprocess.PIPE
    try:
        process = subprocess.Popen(command, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, text=True)
        handle, peak = psutil.Process(process.pid), 0
        captured: list[str] = []
        reader = None
        if log is None:  # drain the pipe in a thread so a chatty command never blocks on a full pipe
            reader = threading.Thread(target=lambda: captured.extend(process.stdout), daemon=True)
            reader.start()
        try:
            while process.poll() is None:
                peak = max(peak, tree_rss(handle))
                time.sleep(interval)
        except BaseException:
            stop_tree(handle)
            raise
        if reader is not None:
            reader.join()
    finally:
        if log:
            out.close()
    if process.returncode:
        tail = "".join(captured)[-2000:] if log is None else f"(its output is in {log})"
        raise RuntimeError(f"{' '.join(map(str, command))} failed with exit {process.returncode}: {tail}")
    return Measured(time.perf_counter() - started, children_cpu_seconds() - cpu_before, peak)


# ------------------------------------------------------------------------------------------------ resuming

def with_refit(params: "Params", refit_with_validation: bool) -> "Params":
    """params.yaml's settings with `train.refit_with_validation` set as a benchmark's command line asks."""
    ranking = params.ranking.override(refit_with_validation=refit_with_validation)
    return dataclasses.replace(params, train=ranking.train)


def ledger_file(folder: Path, refit_with_validation: bool) -> Path:
    """The ledger of one final-fit protocol (`train.refit_with_validation`): rows scored from training pairs alone and
    rows scored after the final fit on training + validation pairs never resume as each other."""
    return Path(folder) / ("runs-refit.jsonl" if refit_with_validation else "runs.jsonl")


class Ledger:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.rows: dict[str, dict] = {}
        if self.path.is_file():
            lines = self.path.read_text().splitlines()
            for number, line in enumerate(lines, 1):
                if not line.strip():
                    continue
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError:
                    if number == len(lines):
                        self._drop_torn_tail()  # torn by an interruption mid-write: that unit is rerun
                        break
                    raise ValueError(f"{self.path}:{number}: not a JSON line; delete the file to start over") from None
                # lines written before the ledger was shared spelled a row as {"key": ..., **value}
                value = entry["value"] if "value" in entry else {k: v for k, v in entry.items() if k != "key"}
                self.rows[entry["key"]] = value

    def _drop_torn_tail(self) -> None:
        """Cut the last line off the file, so that the next line appended starts on a line of its own."""
        data = self.path.read_bytes().rstrip(b"\n")
        with open(self.path, "rb+") as handle:
            handle.truncate(data.rfind(b"\n") + 1)

    def get_or_run(self, key: str, work: Callable[[], dict]) -> dict:
        """The recorded result for `key`, or `work()`'s, recorded before it is returned."""
        if key not in self.rows:
            self.put(key, work())
        return self.rows[key]

    def put(self, key: str, value: dict) -> None:
        """Record `value` for `key`, replacing an earlier row (the last line for a key is the one read back)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as handle:
            handle.write(json.dumps({"key": key, "value": value}) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        self.rows[key] = value


# ------------------------------------------------------------------------------------------------ shared by studies

# the EASE lambdas a study's tuned EASE tries, in order, as far as its budget allows
EASE_SEARCH = (500.0, 100.0, 2000.0, 50.0)
# bert_rs's choices (Model.choices()) -> the models.bert_rs grid that offered them; a one-point grid fixes the choice
CHOICE_GRIDS = {"side_weight": "text_side_weights", "text_match": "text_matches", "text_weight": "text_weights",
                "ease_lambda": "lambdas", "regulariser": "regularisers",
                "whitening": "whitening", "pop_weight": "pop_weights"}
# pop_only: a one-point popularity grid never offers "popularity alone"; a partner that chose it scores popularity,
# which has no text to shuffle, so its ablation is the item model at the same settings (reported as such)
NOT_A_SETTING = {"validation_looks", "pop_only", "epochs_scored_on_validation"}


def fixed_choices(choices: dict | None) -> dict:
    """models.bert_rs overrides that leave the closed-form text model exactly one option per setting: the one its
    partner chose (so the ablation cannot re-search). Unknown choice names stop the run rather than be ignored."""
    fields = {f.name for section in (BertRSConfig, DenseSearchConfig) for f in dataclasses.fields(section)}
    out = {}
    for key, value in (choices or {}).items():
        if key in NOT_A_SETTING:
            continue
        grid = CHOICE_GRIDS.get(key, f"{key}s")
        if grid not in fields and key not in fields:
            raise KeyError(f"choice {key!r} maps to no models.bert_rs setting; add it to CHOICE_GRIDS")
        if grid in fields:
            out[grid] = [value]
        elif key in fields:
            out[key] = value
    return out


def review_times(table, data: PreparedData) -> np.ndarray:
    """The prepared reviews' times, in the order of a cache's review table (checked to be the same reviews)."""
    reviews = load_reviews(data.root, columns=["review_id", "time"])
    if not np.array_equal(reviews.column("review_id").to_numpy(), table.column("review_id").to_numpy()):
        raise RuntimeError(f"{data.root}: the cache's reviews are not the prepared data's, in its order")
    return reviews.column("time").fill_null(0).to_numpy()


def user_bootstrap(a: list[float], b: list[float], users: np.ndarray, rounds: int = 2000, seed: int = 0
                   ) -> tuple[float, float]:
    """95% interval of the mean per-positive gain a - b when USERS are resampled with replacement, each bringing
    all of their positives: under the random split a user holds several, and they are not independent."""
    diff = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    _, user_of = np.unique(np.asarray(users), return_inverse=True)
    gain_sum = np.bincount(user_of, weights=diff)  # (n_users,)
    positives = np.bincount(user_of).astype(np.float64)  # (n_users,)
    rng = np.random.default_rng(seed)
    drawn = rng.integers(0, len(gain_sum), size=(rounds, len(gain_sum)))
    means = gain_sum[drawn].sum(1) / positives[drawn].sum(1)
    return float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))


def repeat_reviews(prepared: Path, n: int) -> None:
    """Grow reviews.parquet to n rows by repeating it with fresh review ids (same users, items and splits)."""
    path = prepared / "reviews.parquet"
    table = pq.read_table(path)
    reps = -(-n // table.num_rows)
    grown = pa.concat_tables([table] * reps).slice(0, n)
    ids = pa.array(np.arange(n, dtype=np.int64))
    grown = grown.set_column(grown.schema.get_field_index("review_id"), grown.schema.field("review_id"), ids)
    pq.write_table(grown.replace_schema_metadata(table.schema.metadata), path, row_group_size=8192)


def write_report(out: Path, name: str, report: dict, markdown: Callable[[dict], str]) -> None:
    """A benchmark's results: `<out>/<name>.json` (the report) and `<out>/<name>.md` (its table), also printed."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / f"{name}.md").write_text(markdown(report))
    print(markdown(report))


def pct(x) -> str:
    return "n/a" if x is None else f"{100 * x:+.1f}%"


def uses_text(choices: dict | None) -> bool:
    """Whether a fitted text model's chosen settings read the review vectors: bert_rs's guard may keep a plain
    setting (`ReviewAwareSpace.is_plain`); neural heads and the scalable solver (text-initialised) always read them."""
    if not choices or "side_weight" not in choices:
        return True
    return not ReviewAwareSpace.is_plain(Setting(
        choices["whitening"], choices["side_weight"], choices["ease_lambda"], choices["regulariser"],
        choices["text_match"], choices["text_weight"], choices["pop_weight"], 0.0 if choices["pop_only"] else 1.0))
