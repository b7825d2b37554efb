"""quark_jax: a JAX-first codebase for the whole life of a language model."""
import pathlib

import setuptools

_HERE = pathlib.Path(__file__).parent
_REQUIREMENTS = [
    line.strip()
    for line in (_HERE / "requirements.txt").read_text().splitlines()
    if line.strip() and not line.startswith(("#", "-"))
]

setuptools.setup(
    name="quark_jax",
    version="0.1.0",
    description="Data, pre-training, fine-tuning, inference and agents for language models in JAX.",
    python_requires=">=3.11",
    packages=setuptools.find_packages(include=["quark_jax", "quark_jax.*"]),
    package_data={"quark_jax.data": ["resources/*.jsonl"]},
    install_requires=_REQUIREMENTS,
    extras_require={"test": ["pytest==9.2.0"]},
    entry_points={"console_scripts": ["quark=quark_jax.cli:main"]},
)
