"""The session's tiny run loaded once for every safety test (``qj.load``; tests only read it)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tiny_model(trained_run):
    import quark_jax as qj

    return qj.load(trained_run["model_dir"])
