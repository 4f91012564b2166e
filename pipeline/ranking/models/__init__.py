"""The models: each fits and scores; none lists or searches a grid of its own settings."""
