"""Entry points of the `mmdiff` tool: one module per command, each runnable as `python -m jobs.<command>`."""
