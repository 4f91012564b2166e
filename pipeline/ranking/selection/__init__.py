"""Choosing on validation: the one rule every model's choices go through."""
