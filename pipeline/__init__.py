"""BERT-RS library: data, text encoding, embedding cache, ranker, metrics. Stages in `stages/` call into it."""
