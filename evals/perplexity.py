"""Validation perplexity of a trained run, as one JSON line (the same as ``quark eval``).

    python evals/perplexity.py --model_dir runs/tiny_demo [--mixture_or_task_name stdlib] [--batches 0]
"""

import sys

from quark_jax.cli import main

if __name__ == "__main__":
    sys.exit(main(["eval", *sys.argv[1:]]))
