"""Work done once per prepared data and reused by every closed-form run (the training Gram's decomposition)."""
