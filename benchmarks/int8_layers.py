"""Which of an encoder's linear layers can run in int8: the pooled vectors' cosine to fp32 and the speed, per choice.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/int8_layers.py               # the bundled sample, 256 reviews
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/int8_layers.py --reviews ../shared/data/amazon2018/Gift_Cards_5.json.gz

A BERT layer has four kinds of linear layer: the query/key/value projections, the attention output projection, the
feed-forward input (d -> 4d) and output (4d -> d) projections. For every non-empty set of kinds, the packaged MiniLM
encoder (`embed`'s default) is run with those layers in dynamic int8 (torch's quantisation with one weight scale per
output channel, activations quantised on the fly; what backend `torch_int8` does with pipeline.text.encode's
`INT8_LAYERS`) on the first `--n` reviews of a file, and compared with fp32: the mean and minimum row cosine of the
mean-pooled and pooler vectors, and the reviews/s of each, fp32 timed before and after every int8 run (the ratio
uses their mean). The issue's rule for an int8 path is a cosine >= 0.99; the table shows which sets meet it and what
they buy. Writes benchmarks/results/int8_layers.{json,md} (`--out`) with the load average at the start and the end.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import gzip
import itertools
import json
import os
import platform
import sys
import time
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.io import write_json  # noqa: E402
from pipeline.text.encode import INT8_LAYERS, cosine_agreement, encode_pooled, load_encoder  # noqa: E402
from pipeline.text.encoders import packaged_model_path  # noqa: E402

SAMPLE = ROOT / "data" / "sample" / "reviews_Digital_Music_5.first6907.json.gz"
KINDS = {  # a linear layer's kind, from its name in a transformers BertModel
    "query/key/value": lambda name: ".attention.self." in name,
    "attention output": lambda name: name.endswith("attention.output.dense"),
    "feed-forward input": lambda name: name.endswith("intermediate.dense"),
    "feed-forward output": lambda name: name.endswith(".output.dense") and ".attention." not in name,
}
POOLINGS = ("mean", "pooler")


def read_reviews(path: Path, n: int) -> list[str]:
    texts = []
    with gzip.open(path, "rt") as lines:
        for line in lines:
            record = json.loads(line)
            texts.append(f"{record.get('summary', '')} {record.get('reviewText', '')}".strip())
            if len(texts) == n:
                break
    return texts


def timed(encoder, texts: list[str]) -> tuple[dict, float]:
    start = time.perf_counter()
    vectors = encode_pooled(encoder, texts, POOLINGS)
    return vectors, len(texts) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reviews", type=Path, default=SAMPLE, help="an Amazon 2014/2018 JSON-lines .gz file")
    parser.add_argument("--n", type=int, default=256)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "int8_layers")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load_start = os.getloadavg()
    texts = read_reviews(args.reviews, args.n)
    fp32 = load_encoder(packaged_model_path(), pooling="mean", max_length=args.max_length, batch_size=args.batch_size)
    reference, _ = timed(fp32, texts)  # also the warm-up
    linear = [name for name, module in fp32.model.named_modules() if isinstance(module, torch.nn.Linear)]
    rows = []
    for size in range(1, len(KINDS) + 1):
        for kinds in itertools.combinations(KINDS, size):
            layers = [name for name in linear if any(KINDS[kind](name) for kind in kinds)]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # torch.ao.quantization announces its move to torchao
                model = quantize_dynamic(copy.deepcopy(fp32.model),
                                         {name: per_channel_dynamic_qconfig for name in layers}, dtype=torch.qint8)
            int8 = dataclasses.replace(fp32, model=model)
            _, before = timed(fp32, texts)
            vectors, speed = timed(int8, texts)
            _, after = timed(fp32, texts)
            row = {"kinds": list(kinds), "layers": len(layers), "reviews_per_s": round(speed, 1),
                   "fp32_reviews_per_s": round((before + after) / 2, 1),
                   "speed_over_fp32": round(speed / ((before + after) / 2), 2),
                   "cosine": {p: {k: round(v, 4) for k, v in cosine_agreement(reference[p], vectors[p]).items()}
                              for p in POOLINGS}}
            rows.append(row)
            print(json.dumps(row), flush=True)
    command = "python " + " ".join(["benchmarks/int8_layers.py", *sys.argv[1:]])
    report = {"meta": {"date": time.strftime("%Y-%m-%d"), "command": command,
                       "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch "
                                  f"{torch.__version__} ({torch.backends.cpu.get_cpu_capability()})",
                       "load_average_start": load_start, "load_average_end": os.getloadavg(),
                       "reviews": str(args.reviews), "n": len(texts), "max_length": args.max_length,
                       "threads": args.threads, "int8_layers_of_the_backend": list(INT8_LAYERS)},
              "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json(args.out.with_suffix(".json"), report)
    meta = report["meta"]
    lines = ["# Which linear layers can run in int8", "",
             f"{meta['date']}, {meta['machine']}, `{meta['command']}`; {meta['n']} reviews of {meta['reviews']}, "
             f"max_length {meta['max_length']}, {meta['threads']} threads; load average {load_start[0]:.2f} at the "
             f"start, {meta['load_average_end'][0]:.2f} at the end. Cosine: int8 against fp32, row by row; speed: "
             "int8 reviews/s over fp32's, timed before and after it in the same process.", "",
             "| layers in int8 | linear layers | mean-pooled cosine (min) | pooler cosine (min) | reviews/s "
             "| over fp32 |",
             "|---|---|---|---|---|---|"]
    for row in rows:
        cos = row["cosine"]
        lines.append(f"| {' + '.join(row['kinds'])} | {row['layers']} | {cos['mean']['mean']:.4f} "
                     f"({cos['mean']['min']:.4f}) | {cos['pooler']['mean']:.4f} ({cos['pooler']['min']:.4f}) | "
                     f"{row['reviews_per_s']} | {row['speed_over_fp32']}x |")
    lines += ["", f"Backend `torch_int8` quantises the layers named *{', *'.join(INT8_LAYERS)}.", ""]
    args.out.with_suffix(".md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
