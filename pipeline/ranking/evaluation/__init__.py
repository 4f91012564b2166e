"""Measuring a fitted model: metrics, sampled and full ranking, reports, the text ablation."""
