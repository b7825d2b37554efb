"""quark_jax: data, pre-training, fine-tuning, inference and agents for language models in JAX.

Notebook API::

    import quark_jax as qj
    model = qj.load("/tmp/run")
    print(model.generate(["def fib(n):"], max_new_tokens=64))
    qj.Trainer.from_gin("configs/runs/pretrain_tiny.gin", overrides=["MODEL_DIR='/tmp/run'"]).run()
"""

import os as _os

# TensorFlow (used by seqio for data only) logs C++ INFO and WARNING lines once it is running; keep errors.
# (The lines it prints while loading come earlier than this setting; the `quark` command filters those, and
# `quark -v` turns this default back to 0.)
_TF_LOG_LEVEL_DEFAULTED = "TF_CPP_MIN_LOG_LEVEL" not in _os.environ
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__version__ = "0.1.0"


def __getattr__(name):
    # Lazy: `import quark_jax` stays cheap (no TensorFlow, no gin registration) until something is used.
    if name in ("load", "LoadedModel"):
        from quark_jax import api

        return getattr(api, name)
    if name == "Trainer":
        from quark_jax import gin_utils  # noqa: F401 -- registers the gin configurables
        from quark_jax.training.trainer import Trainer

        return Trainer
    if name == "ModelConfig":
        from quark_jax.models.config import ModelConfig

        return ModelConfig
    raise AttributeError(f"module 'quark_jax' has no attribute {name!r}")
