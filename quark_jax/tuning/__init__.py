"""Hyper-parameter search over gin bindings (Optuna: TPE or random sampling, median or Hyperband pruning, a
journal-file or RDB study shared by workers) and population-based training; ``quark tune`` (docs/tuning.md)."""
