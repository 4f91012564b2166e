"""Text-side fixtures: a tiny random BERT (never downloaded) and a tiny prepared-data folder (see tests/conftest.py)."""

from __future__ import annotations

import shutil
import string
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from pipeline.data.prepared import ITEMS_SCHEMA, REVIEWS_SCHEMA, USERS_SCHEMA
from pipeline.io import write_json, write_table

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
WORDS = ["the", "album", "song", "great", "bad", "love", "music", "good", "it", "is", "was", "and", "best", "time",
         "voice", "beat", "track", "guitar", "band", "sound"]
MARKER = "zyzzyva"  # planted only in test-split reviews; must never reach the fine-tuning corpus

# 6 users, 5 items; user 5 and item 4 have no training review (their profiles fall back)
TOY_REVIEWS = [
    # (user, item, split, text)
    (0, 0, "train", "The album is great. I love the voice!The beat is good."),
    (0, 1, "train", "Bad song. It was bad time."),
    (0, 2, "test", f"The {MARKER} track. Great {MARKER} band."),
    (1, 0, "train", "Great music and great band. Best album."),
    (1, 3, "valid", "The guitar sound is good."),
    (1, 1, "train", "It is the best track. Love it."),
    (2, 2, "train", "Good beat.The voice was great. Guitar and band."),
    (2, 0, "train", "Best song!"),
    (2, 4, "test", f"{MARKER} {MARKER} album."),
    (3, 3, "train", "The sound was bad. The song is bad. Time is bad."),
    (3, 1, "train", "Music is love. The band is great."),
    (3, 2, "valid", "Good album and good guitar."),
    (4, 0, "train", "The best album. The best voice. The best beat."),
    (4, 3, "train", "It was a good time. Great sound."),
    (4, 2, "train", "Love the track!It is great."),
    (5, 4, "test", f"Great {MARKER}. The best."),
]


def write_vocab(path: Path) -> Path:
    """A WordPiece vocab where every lowercase word tokenises (letters and ##letters), ~100 entries."""
    letters = list(string.ascii_lowercase)
    tokens = SPECIALS + list(".,!?'") + WORDS + letters + [f"##{c}" for c in letters]
    path.write_text("\n".join(tokens) + "\n")
    return path


def tiny_bert_config(vocab_size: int):
    from transformers import BertConfig

    return BertConfig(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                      intermediate_size=37, max_position_embeddings=64, type_vocab_size=2)


@pytest.fixture(scope="session")
def tiny_encoder_master(tmp_path_factory) -> Path:
    """A random tiny `BertModel` (with pooler) + fast WordPiece tokenizer, saved like a real checkpoint."""
    import torch
    from transformers import BertModel, BertTokenizerFast

    root = tmp_path_factory.mktemp("tiny_bert")
    vocab = write_vocab(root / "vocab.txt")
    tokenizer = BertTokenizerFast(vocab=str(vocab), do_lower_case=True)
    torch.manual_seed(0)
    model = BertModel(tiny_bert_config(len(vocab.read_text().split())))
    model.save_pretrained(root)
    tokenizer.save_pretrained(root)
    return root


@pytest.fixture
def tiny_encoder_dir(tiny_encoder_master, tmp_path) -> Path:
    """A private copy of the tiny encoder, so a test may modify it."""
    return Path(shutil.copytree(tiny_encoder_master, tmp_path / "tiny_encoder"))


def write_prepared(root: Path, rows=TOY_REVIEWS, n_users: int = 6, n_items: int = 5, fingerprint: str = "toyfp01"):
    """A minimal prepared folder: the files `finetune` and `embed` read (reviews, users, items, stats.json)."""
    root.mkdir(parents=True, exist_ok=True)
    users, items, splits, texts = zip(*[(u, i, s, t) for u, i, s, t in rows])
    n = len(rows)
    reviews = pa.table({
        "review_id": pa.array(np.arange(n) * 10 + 7, pa.int64()),  # ids unlike positions, to catch mix-ups
        "user_idx": pa.array(users, pa.int32()),
        "item_idx": pa.array(items, pa.int32()),
        "rating": pa.array(np.full(n, 5.0), pa.float32()),
        "time": pa.array(np.arange(n) + 1_300_000_000, pa.int64()),
        "text": pa.array(texts, pa.string()),
        "split": pa.array(splits, pa.string()),
    })
    write_table(root / "reviews.parquet", reviews, REVIEWS_SCHEMA)
    write_table(root / "users.parquet", pa.table({"user_idx": pa.array(range(n_users), pa.int32()),
                                                   "user_id": [f"U{u}" for u in range(n_users)]}), USERS_SCHEMA)
    write_table(root / "items.parquet", pa.table({"item_idx": pa.array(range(n_items), pa.int32()),
                                                   "item_id": [f"I{i}" for i in range(n_items)]}), ITEMS_SCHEMA)
    write_json(root / "stats.json", {"fingerprint": fingerprint, "reviews": n})
    return root


@pytest.fixture
def toy_prepared(tmp_path) -> Path:
    return write_prepared(tmp_path / "prepared")
