"""Tests of ``quark serve``. A package so that its ``conftest.py`` is ``serving.conftest``: a second top-level
``conftest`` module would replace the root one that other test files import with ``from conftest import ...``."""
