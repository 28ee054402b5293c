"""The config: schema (dataclasses and checks), loading, and the run grid with its paths.

One source of truth for Snakemake, DVC, the CLI, tests and benchmarks.
"""
from .grid import (Paths, grid_run_ids, grid_soup_run_ids, run_ids, shift_reference_run, soup_run_ids,  # noqa: F401
                   soupable, split_run_id)
from .load import digest, dotlist, load_config, to_yaml  # noqa: F401
from .schema import *  # noqa: F401,F403
from .schema import ConfigError, validate  # noqa: F401
