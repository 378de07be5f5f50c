"""Reproducible benchmarks: ``python -m benchmarks.NAME`` writes ``benchmarks/results/NAME.json``.

Machines are shared and noisy: every benchmark interleaves the variants it compares, repeats
them, and reports medians and ratios measured side by side in one run.
"""
