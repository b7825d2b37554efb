"""Evaluations of trained runs: validation perplexity (``perplexity``) and the task suites of ``quark eval
--tasks`` (``tasks`` the YAML format, ``harness`` batched evaluation, ``metrics``, ``sandbox``, ``report``,
``regression`` the baseline gate, ``cli_main``); the built-in tasks live in ``evals/tasks``. See
docs/evaluation.md."""
