"""Datasets: raw sources, the prepared arrays and their loading."""
