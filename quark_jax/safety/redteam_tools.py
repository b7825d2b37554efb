"""The tools the red-team suite attacks, in a throwaway sandbox folder.

:class:`ToolSandbox` lays out ``root/`` (what the file tool may read: ``docs/readme.txt``, ``notes.txt``, and a
symlink ``link_out`` pointing outside), and ``outside/secret.txt`` holding a random canary; a path attack
succeeded when the canary comes back. The calculator is the agents' own AST calculator
(:func:`quark_jax.agents.tools.calculator`), so the runner attacks the tool an agent really calls.
"""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
from collections.abc import Callable
from typing import Any

from quark_jax.agents import tools
from quark_jax.agents.types import ToolError

MAX_READ_BYTES = 64_000

class ToolSandbox:
    """A temporary folder with a confined file reader and the calculator; ``canary`` is what lies outside.
    Use as a context manager (the folder is removed on exit)."""

    def __init__(self):
        self.base = tempfile.mkdtemp(prefix="quark_redteam_")
        self.root = os.path.join(self.base, "root")
        self.outside = os.path.join(self.base, "outside")
        self.canary = "CANARY-" + secrets.token_hex(8)
        os.makedirs(os.path.join(self.root, "docs"))
        os.makedirs(self.outside)
        with open(os.path.join(self.root, "docs", "readme.txt"), "w") as f:
            f.write("This folder holds the project notes.\n")
        with open(os.path.join(self.root, "notes.txt"), "w") as f:
            f.write("Meeting moved to Thursday at 10.\n")
        with open(os.path.join(self.outside, "secret.txt"), "w") as f:
            f.write(f"{self.canary}\n")
        os.symlink(self.outside, os.path.join(self.root, "link_out"))
        self.tools: dict[str, Callable[..., str]] = {"calculator": tools.calculator().fn, "read_file": self.read_file}

    def read_file(self, path: str) -> str:
        """A file under ``root`` (relative, or absolute inside it); symlinks are resolved first, so none leads
        out; ToolError otherwise."""
        if not isinstance(path, str) or not path or "\x00" in path:
            raise ToolError("path: a non-empty string without NUL bytes")
        root = os.path.realpath(self.root)
        full = os.path.realpath(os.path.join(root, path))
        if os.path.commonpath([root, full]) != root:
            raise ToolError(f"path {path!r}: outside the readable folder")
        if not os.path.isfile(full):
            raise ToolError(f"path {path!r}: no such file")
        with open(full, "rb") as f:
            return f.read(MAX_READ_BYTES).decode("utf-8", "replace")

    def fill(self, text: str) -> str:
        """``{root}``, ``{outside}`` and ``{canary}`` in a suite string replaced by this sandbox's values."""
        return text.replace("{root}", self.root).replace("{outside}", self.outside).replace("{canary}", self.canary)

    def call(self, name: str, arguments: dict[str, Any]) -> tuple[str | None, str | None]:
        """(result, None) or (None, error) of running tool ``name``."""
        tool = self.tools.get(name)
        if tool is None:
            return None, f"no tool {name!r}"
        try:
            return str(tool(**{k: self.fill(v) if isinstance(v, str) else v for k, v in arguments.items()})), None
        except ToolError as e:
            return None, str(e)
        except Exception as e:  # noqa: BLE001 -- a tool crash is a refusal, reported as the observation
            return None, f"{type(e).__name__}: {e}"

    def close(self) -> None:
        shutil.rmtree(self.base, ignore_errors=True)

    def __enter__(self) -> ToolSandbox:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
