"""Experiment configs: one file per family, each `get_config(arg)` (ml_collections)."""
