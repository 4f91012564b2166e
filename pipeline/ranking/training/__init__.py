"""Fitting a model: closed-form fits, the SGD loop, its resume and distributed forms, memory."""
