"""Command line, simulation driver, partitioning, results and plots."""
