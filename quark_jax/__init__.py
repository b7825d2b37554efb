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



def _libtpu_without_tpus() -> bool:
    """libtpu is installed (to compile for TPU slices, see ``quark_jax.topology``) on a machine with no TPU
    chip (JAX's own test: no PCI device of Google's vendor id) and no other JAX plugin (CUDA, ROCm), with
    JAX_PLATFORMS unset."""
    import glob
    import importlib.util

    if "JAX_PLATFORMS" in _os.environ or importlib.util.find_spec("libtpu") is None:
        return False
    if importlib.util.find_spec("jax_plugins") is not None:
        return False
    for vendor in glob.glob("/sys/bus/pci/devices/*/vendor"):
        try:
            with open(vendor) as f:
                if f.read().strip() == "0x1ae0":
                    return False
        except OSError:
            continue
    return True


# There JAX would still load libtpu for every process, and libtpu, finding no TPU, prints warnings about a
# TPU VM's environment variables (and holds /tmp/libtpu_lockfile). The CPU is the only platform JAX could
# use, so say so; describing a TPU slice loads libtpu explicitly and is unaffected.
if _libtpu_without_tpus():
    _os.environ["JAX_PLATFORMS"] = "cpu"

__version__ = "0.1.0"


def __getattr__(name):
    # Lazy: `import quark_jax` stays cheap (no TensorFlow, no gin registration) until something is used.
    if name in ("load", "LoadedModel", "load_classifier"):
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
