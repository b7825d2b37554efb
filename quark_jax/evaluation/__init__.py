"""Evaluations of trained runs (validation perplexity first; benchmark suites live in ``evals/``)."""
