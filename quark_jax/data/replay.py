"""Continual training data: the newest data version mixed with replay of the older ones at a gin-bound rate.

    MIXTURE_OR_TASK_NAME = @quark_jax.data.replay_mixture()
    quark_jax.data.replay_mixture.data_root = '/data/quark_demo'   # the root of `quark data refresh`
    quark_jax.data.replay_mixture.replay_fraction = 0.1            # 10% of examples from older versions

The mixture is flat over tasks: the new version's tasks share ``1 - replay_fraction`` of the examples in the
proportions of their own manifest rates, and every ancestor version (by the ``parent`` links) shares
``replay_fraction`` equally, split again by its own task rates. ``replay_fraction = 0`` trains on the new
version alone. Its validation split is the same mixture's, so ``quark train``'s periodic evaluation mixes old
and new held-out data in the same proportions; ``bench/continual.py`` measures each on its own.
"""

from __future__ import annotations

import os

import gin

from quark_jax.data import tasks
from quark_jax.data.built_tasks import register_built
from quark_jax.data.refresh import lineage, read_manifest, versions


def version_rates(version_dir: str | os.PathLike) -> dict[str, float]:
    """The registered task names of one data version and their rates, normalised to sum to 1."""
    name = register_built(version_dir)
    rates = {f"{name}.{task}": float(info["rate"]) for task, info in read_manifest(version_dir)["tasks"].items()
             if any(s.get("num_examples", 0) for s in info["splits"].values())}
    total = sum(rates.values())
    return {task: rate / total for task, rate in rates.items()} if total else {}


@gin.configurable("replay_mixture", module="quark_jax.data")
def replay_mixture(data_root: str = gin.REQUIRED, replay_fraction: float = 0.0, version: str | None = None) -> str:
    """Registers (and returns the name of) the newest version of ``data_root`` (or ``version``, e.g. ``'v0002'``)
    mixed with its ancestors at ``replay_fraction``."""
    if not 0.0 <= replay_fraction < 1.0:
        raise ValueError(f"quark_jax.data.replay_mixture.replay_fraction={replay_fraction} must be in [0, 1)")
    found = versions(data_root)
    if not found:
        raise FileNotFoundError(f"{data_root} holds no data versions; make one with "
                                f"`quark data refresh --mixture NAME --root {data_root}`")
    if version is None:
        newest = found[-1]
    else:
        matches = [v for v in found if v.name == version]
        if not matches:
            raise ValueError(f"quark_jax.data.replay_mixture.version={version!r} is not in {data_root} "
                             f"(it holds {', '.join(v.name for v in found)})")
        newest = matches[0]
    new, *older = lineage(newest)
    rates = {task: (1.0 - replay_fraction) * r for task, r in version_rates(new).items()}
    if not rates:
        raise ValueError(f"data version {new} holds no documents to train on (was its refresh empty?)")
    replayable = [v for v in older if version_rates(v)]
    if replay_fraction > 0:
        if not replayable:
            raise ValueError(f"replay_fraction={replay_fraction} but {new.name} has no older version with documents "
                             f"to replay; bind replay_fraction = 0")
        for old in replayable:
            for task, r in version_rates(old).items():
                rates[task] = rates.get(task, 0.0) + replay_fraction * r / len(replayable)
    name = f"{read_manifest(new)['name']}_replay{round(replay_fraction * 1000):03d}"
    tasks.register_mixture(name, rates)
    return name
