"""Thin stage entry points: parse params and paths, call `pipeline`, write outputs. `stages.cli` assembles them."""
