"""The ``readtalk`` command line (``readtalk.cli:main``): one parser table, one module per
command group. Only this package parses arguments; the library exposes functions and config
dataclasses."""

from readtalk.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
