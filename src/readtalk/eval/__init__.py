"""readtalk.eval: one function per metric."""
