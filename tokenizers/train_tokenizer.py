"""Rebuilds the committed tokenizer ``tokenizers/quark_stdlib_4k.model`` (and ``.vocab``).

Usage (from the repository root)::

    python tokenizers/train_tokenizer.py [--vocab_size 4096] [--output tokenizers/quark_stdlib_4k]

The training text is the ``train`` split of both stdlib corpora (code and docstrings, see
``quark_jax/data/corpus.py``), so validation files stay unseen. The implementation and the reasons for
its settings are in ``quark_jax/data/tokenizer_training.py`` (also behind ``quark tokenizer train``); with
the defaults below, on the same Python version, the output equals the committed model byte for byte.
"""

from __future__ import annotations

import argparse
import pathlib
import sys

_REPO = pathlib.Path(__file__).resolve().parents[1]
try:
    from quark_jax.data import tokenizer_training
except ImportError:  # Run from a checkout without `pip install -e .`.
    sys.path.insert(0, str(_REPO))
    from quark_jax.data import tokenizer_training


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vocab_size", type=int, default=tokenizer_training.STDLIB_VOCAB_SIZE)
    parser.add_argument("--output", default=str(_REPO / "tokenizers" / "quark_stdlib_4k"),
                        help="Path prefix; .model and .vocab are appended.")
    parser.add_argument("--max_chars", type=int, default=tokenizer_training.STDLIB_MAX_CHARS,
                        help="Sample the training text down to about this many characters.")
    args = parser.parse_args(argv)
    print(tokenizer_training.train_stdlib(args.output, args.vocab_size, args.max_chars))


if __name__ == "__main__":
    main()
