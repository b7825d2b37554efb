"""Population-based training: N members train in rounds; after each round the worst quarter exploit (take a
better member's newest checkpoint and hyper-parameters) and explore (multiply each float hyper-parameter of
the search space, e.g. learning rate and weight decay, by 0.8 or 1.2, clipped to its range).

Member m trains in ``<pbt_dir>/members/<m>/`` (an ordinary run directory; each round raises ``TRAIN_STEPS`` and
the trainer resumes from the newest checkpoint, so an exploited member goes on from the donor's step). The
learning-rate schedule spans the whole run (``decay_steps`` = rounds x steps per round). Each member's
``schedule.json`` records, per round, its bindings, start and end steps, validation loss and what it copied.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import random
import shutil
from typing import Any

from quark_jax.tuning import space as space_lib

log = logging.getLogger(__name__)

SCHEDULE_FILE = "schedule.json"
PERTURB_FACTORS = (0.8, 1.2)


@dataclasses.dataclass(frozen=True)
class PBTSpec:
    """A population-based training run."""

    pbt_dir: str
    space: space_lib.SearchSpace
    gin_files: tuple[str, ...] = ()
    overrides: tuple[str, ...] = ()
    members: int = 4
    rounds: int = 4
    steps_per_round: int = 50
    seed: int = 0
    exploit_fraction: float = 0.25
    metric: str = "val_loss"

    def bindings(self, params: dict[str, Any]) -> list[str]:
        """The space's bindings of ``params``; derived entries see TRAIN_STEPS = the whole run (all rounds)."""
        return self.space.bindings(params, {"TRAIN_STEPS": self.rounds * self.steps_per_round})


def member_dir(spec: PBTSpec, member: int) -> str:
    return os.path.join(spec.pbt_dir, "members", str(member))


def _newest_checkpoint(run_dir: str) -> int:
    directory = os.path.join(run_dir, "checkpoints")
    steps = [int(n) for n in os.listdir(directory) if n.isdigit()] if os.path.isdir(directory) else []
    if not steps:
        raise FileNotFoundError(f"{run_dir} has no checkpoint to copy")
    return max(steps)


def copy_checkpoint(donor_dir: str, recipient_dir: str) -> int:
    """Replaces the recipient's checkpoints with the donor's newest one (copied to a temporary directory beside
    it, then renamed into place); returns its step."""
    step = _newest_checkpoint(donor_dir)
    target = os.path.join(recipient_dir, "checkpoints")
    tmp = os.path.join(recipient_dir, f".checkpoints.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    shutil.copytree(os.path.join(donor_dir, "checkpoints", str(step)), os.path.join(tmp, str(step)), symlinks=True)
    old = target + f".{os.getpid()}.old"
    if os.path.isdir(target):
        os.replace(target, old)
    os.replace(tmp, target)
    shutil.rmtree(old, ignore_errors=True)
    for name in ("summary.json",):  # the recipient's finished-run marker no longer describes its checkpoint
        path = os.path.join(recipient_dir, name)
        if os.path.exists(path):
            os.remove(path)
    return step


def perturb(space: space_lib.SearchSpace, params: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    """Each float dimension of ``space`` multiplied by 0.8 or 1.2 (clipped to its range); others kept."""
    out = dict(params)
    for d in space.sampled:
        if d.kind == "float" and d.binding in out:
            out[d.binding] = d.clip(out[d.binding] * rng.choice(PERTURB_FACTORS))
    return out


def initial_params(space: space_lib.SearchSpace, rng: random.Random) -> dict[str, Any]:
    """A random point of ``space`` (log-uniform for log dimensions)."""
    import math

    params = {}
    for d in space.sampled:
        if d.kind == "categorical":
            params[d.binding] = rng.choice(d.choices)
        elif d.log:
            params[d.binding] = d.clip(math.exp(rng.uniform(math.log(d.low), math.log(d.high))))
        else:
            params[d.binding] = d.clip(rng.uniform(d.low, d.high))
    return params


def _train_round(spec: PBTSpec, member: int, params: dict[str, Any], end_step: int) -> dict[str, Any]:
    from quark_jax import gin_utils
    from quark_jax.training.trainer import Trainer
    from quark_jax.tuning.search import TRIAL_DEFAULTS

    run_dir = member_dir(spec, member)
    bindings = [*spec.overrides, *spec.bindings(params), f"MODEL_DIR={run_dir!r}", f"TRAIN_STEPS={end_step}",
                f"quark_jax.OptimizerConfig.decay_steps={spec.rounds * spec.steps_per_round}"]
    gin_utils.parse(list(spec.gin_files), bindings, defaults=TRIAL_DEFAULTS)
    return Trainer(gin_utils.build_train_config(), gin_utils.config_text()).run()


def _write_schedule(spec: PBTSpec, member: int, schedule: list[dict]) -> None:
    space_lib.write_atomic(os.path.join(member_dir(spec, member), SCHEDULE_FILE),
                           json.dumps({"member": member, "rounds": schedule}, indent=2) + "\n")


def run_pbt(spec: PBTSpec) -> dict[str, Any]:
    """Trains the population for ``spec.rounds`` rounds; returns the best member, its validation loss and
    bindings, and every member's final loss."""
    rng = random.Random(spec.seed)
    params = [initial_params(spec.space, rng) for _ in range(spec.members)]
    schedules: list[list[dict]] = [[] for _ in range(spec.members)]
    losses = [float("inf")] * spec.members
    copied: list[dict | None] = [None] * spec.members
    for round_index in range(spec.rounds):
        end_step = (round_index + 1) * spec.steps_per_round
        for m in range(spec.members):
            summary = _train_round(spec, m, params[m], end_step)
            losses[m] = float(summary[spec.metric])
            schedules[m].append({"round": round_index, "start_step": int(summary["start_step"]),
                                 "end_step": int(summary["final_step"]), "bindings": spec.bindings(params[m]),
                                 "params": params[m], spec.metric: losses[m], "exploited": copied[m]})
            _write_schedule(spec, m, schedules[m])
            copied[m] = None
        if round_index == spec.rounds - 1 or spec.members < 2:
            break
        ranked = sorted(range(spec.members), key=lambda m: losses[m])
        quarter = max(1, int(round(spec.members * spec.exploit_fraction)))
        for loser in ranked[-quarter:]:
            donor = rng.choice(ranked[:quarter])
            step = copy_checkpoint(member_dir(spec, donor), member_dir(spec, loser))
            params[loser] = perturb(spec.space, params[donor], rng)
            copied[loser] = {"from_member": donor, "step": step, "donor_" + spec.metric: losses[donor]}
            log.info("round %d: member %d (%.4f) takes member %d's step %d (%.4f) and perturbs", round_index,
                     loser, losses[loser], donor, step, losses[donor])
    best = min(range(spec.members), key=lambda m: losses[m])
    result = {"best_member": best, f"best_{spec.metric}": losses[best], "best_bindings": spec.bindings(params[best]),
              "losses": losses}
    space_lib.write_atomic(os.path.join(spec.pbt_dir, "best.gin"),
                           space_lib.best_gin_text(spec.bindings(params[best]), losses[best], best, "pbt"))
    space_lib.write_atomic(os.path.join(spec.pbt_dir, "pbt.json"), json.dumps(result, indent=2) + "\n")
    return result
