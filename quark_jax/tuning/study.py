"""An Optuna study in a study directory: its storage, sampler and pruner, and the recovery of trials that a
killed worker left RUNNING.

Layout of ``<study_dir>``: ``study.json`` (what the study searches: gin files, bindings, the space),
``journal.log`` (the default storage), ``trials/<n>/`` (trial n's run directory; ``trials/<n>/worker/`` holds
the lease of the worker running it), ``best.gin`` and the PNG plots.

Storage: a journal file (``JournalFileBackend``: appends under a file lock, safe for several worker processes
on one machine or on a shared file system, unlike SQLite) unless ``storage`` is an RDB URL
(``postgresql://user:pass@host/db``), the way to spread workers over hosts.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from quark_jax.training import run_lock

log = logging.getLogger(__name__)

JOURNAL_FILE = "journal.log"
TRIALS_DIR = "trials"
WORKER_LEASE_DIR = "worker"
SAMPLERS = ("tpe", "random")
PRUNERS = ("median", "hyperband", "none")


def _optuna():
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def open_storage(study_dir: str, storage_url: str | None = None) -> Any:
    """The study's storage: ``<study_dir>/journal.log`` through a journal file backend, or an RDB URL."""
    optuna = _optuna()
    if storage_url:
        if "://" not in storage_url:
            raise ValueError(f"--storage {storage_url!r} is not a database URL; use e.g. "
                             "postgresql://user:password@host/db (or leave it out for the journal file)")
        return optuna.storages.RDBStorage(sqlalchemy_url(storage_url))
    from optuna.storages.journal import JournalFileBackend

    os.makedirs(study_dir, exist_ok=True)
    return optuna.storages.JournalStorage(JournalFileBackend(os.path.join(study_dir, JOURNAL_FILE)))


def sqlalchemy_url(url: str) -> str:
    """``url`` with a driver SQLAlchemy can load: a plain ``postgresql://`` URL means psycopg2 to SQLAlchemy;
    where only psycopg 3 (the driver quark pins) is installed it becomes ``postgresql+psycopg://``."""
    import importlib.util

    if url.startswith("postgresql://") and importlib.util.find_spec("psycopg2") is None \
            and importlib.util.find_spec("psycopg") is not None:
        return "postgresql+psycopg://" + url[len("postgresql://"):]
    return url


def make_sampler(name: str, seed: int | None, n_startup_trials: int = 4) -> Any:
    """TPE with ``constant_liar`` (a running trial counts as a bad result, so that parallel workers do not
    sample the same point) or uniform random sampling."""
    optuna = _optuna()
    if name == "tpe":
        return optuna.samplers.TPESampler(constant_liar=True, seed=seed, n_startup_trials=n_startup_trials)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    raise ValueError(f"--sampler {name!r}: choose one of {', '.join(SAMPLERS)}")


def make_pruner(name: str) -> Any:
    """The median rule (stop a trial whose validation loss at a step is worse than the median of earlier
    trials at that step), Hyperband (successive halving over evaluation steps), or none."""
    optuna = _optuna()
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource="auto")
    if name == "none":
        return optuna.pruners.NopPruner()
    raise ValueError(f"--pruner {name!r}: choose one of {', '.join(PRUNERS)}")


def trial_dir(study_dir: str, number: int) -> str:
    return os.path.join(study_dir, TRIALS_DIR, str(number))


def worker_lease(study_dir: str, number: int, stale_after_s: float = 60.0) -> run_lock.RunLease:
    """The lease a worker holds on trial ``number`` while it runs it (heartbeat; stale once the holder died)."""
    directory = os.path.join(trial_dir(study_dir, number), WORKER_LEASE_DIR)
    os.makedirs(directory, exist_ok=True)
    return run_lock.RunLease(directory, stale_after_s=stale_after_s)


def recover_orphans(study: Any, study_dir: str, stale_after_s: float = 60.0) -> list[int]:
    """Marks FAIL every RUNNING trial whose worker is gone (its lease free or stale: the process died, or no
    heartbeat for ``stale_after_s``), and enqueues a retry with the same parameters that resumes from the
    killed trial's checkpoints. Returns the numbers of the recovered trials."""
    optuna = _optuna()
    recovered = []
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        lease_dir = os.path.join(trial_dir(study_dir, trial.number), WORKER_LEASE_DIR)
        if not os.path.isdir(lease_dir):
            continue  # asked a moment ago by a live worker that has not made its directory yet
        try:
            lease = run_lock.RunLease(lease_dir, stale_after_s=stale_after_s).acquire()
        except run_lock.RunDirBusyError:
            continue  # a live worker runs it
        try:
            current = study._storage.get_trial(trial._trial_id)
            if current.state != optuna.trial.TrialState.RUNNING:
                continue  # another worker recovered it first
            study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
            study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number}, skip_if_exists=False)
            recovered.append(trial.number)
            log.warning("trial %d was left running by a worker that is gone: marked failed and queued again",
                        trial.number)
        finally:
            lease.release()
    return recovered


def steps_spent(study: Any) -> int:
    """Trainer steps the study's finished trials (complete or pruned) took: their ``final_step`` user attribute."""
    states = _optuna().trial.TrialState
    return sum(int(t.user_attrs.get("final_step", 0)) for t in study.get_trials(deepcopy=False)
               if t.state in (states.COMPLETE, states.PRUNED))


def budget_used(study: Any) -> int:
    """Trials that count against the study's trial budget: finished (complete or pruned), running, and failed
    ones that were not queued again."""
    optuna = _optuna()
    states = optuna.trial.TrialState
    trials = study.get_trials(deepcopy=False)
    retried = {t.user_attrs.get("retry_of") for t in trials}
    return sum(1 for t in trials if t.state in (states.COMPLETE, states.PRUNED, states.RUNNING)
               or (t.state == states.FAIL and t.number not in retried))
