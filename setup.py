"""quark_jax: a JAX-first codebase for the whole life of a language model."""
import pathlib

import setuptools
from setuptools.command.build_py import build_py

_HERE = pathlib.Path(__file__).parent


def _requirements(name: str) -> list[str]:
    return [
        line.strip()
        for line in (_HERE / name).read_text().splitlines()
        if line.strip() and not line.startswith(("#", "-"))
    ]


# Files read at run time that live at the top of the source tree. An installed package carries them as
# package data under quark_jax/_shipped/ (where quark_jax.resources.shipped looks first): each tree is mapped
# onto a data-only package of that name.
_SHIPPED = {
    "configs": ["*.gin", "*/*.gin"],
    "tokenizers": ["*.model"],
    "data": ["instructions/*.jsonl", "preferences/*.jsonl", "intents/*.jsonl"],
    # The evaluation suites (quark eval --tasks): task YAML, their JSONL data and the regression baselines.
    "evals": ["tasks/*.yaml", "tasks/*.jsonl", "tasks/*/*.jsonl", "tasks/*/*.json", "baselines/*.json"],
}
_SHIPPED_PACKAGES = {f"quark_jax._shipped.{tree}": tree for tree in _SHIPPED}


class _BuildPy(build_py):
    """The shipped trees are data only: no Python module of theirs (tokenizers/train_tokenizer.py, a
    development script) goes into the package."""

    def find_package_modules(self, package, package_dir):
        if package in _SHIPPED_PACKAGES:
            return []
        return super().find_package_modules(package, package_dir)


setuptools.setup(
    name="quark_jax",
    version="0.1.0",
    description="Data, pre-training, fine-tuning, inference and agents for language models in JAX.",
    python_requires=">=3.11",
    packages=setuptools.find_packages(include=["quark_jax", "quark_jax.*"]) + list(_SHIPPED_PACKAGES),
    package_dir=_SHIPPED_PACKAGES,
    package_data={
        "quark_jax.data": ["resources/*.jsonl"],
        "quark_jax.serving": ["static/*"],  # the chat page that `quark serve` serves at /
        **{f"quark_jax._shipped.{tree}": globs for tree, globs in _SHIPPED.items()},
    },
    cmdclass={"build_py": _BuildPy},
    install_requires=_requirements("requirements.txt"),
    # requirements-test.txt starts with "-r requirements.txt"; its own lines are the test-only pins.
    extras_require={"test": _requirements("requirements-test.txt")},
    entry_points={"console_scripts": ["quark=quark_jax.cli:main"]},
)
