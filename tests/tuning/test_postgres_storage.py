"""quark tune across hosts: two worker processes share one study through PostgreSQL (``--storage
postgresql://...``), on a throw-away server started here (initdb in a temporary directory, a loopback port, its
unix socket in the same directory). Skipped where PostgreSQL's server programs or psycopg are not installed."""

from __future__ import annotations

import glob
import os
import shlex
import shutil
import socket
import subprocess
import tempfile

import pytest

optuna = pytest.importorskip("optuna")
pytest.importorskip("psycopg")

from quark_jax.tuning import search, space as space_lib  # noqa: E402

PG_BIN = sorted(glob.glob("/usr/lib/postgresql/*/bin"))
pytestmark = pytest.mark.skipif(not PG_BIN or not os.path.exists(os.path.join(PG_BIN[-1], "initdb")),
                                reason="PostgreSQL server programs (initdb, pg_ctl) are not installed")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def postgres_url():
    """A PostgreSQL server for this test only: trust authentication on 127.0.0.1, no fsync; removed afterwards.
    initdb refuses to run as root, so as root the server runs as the postgres user."""
    bin_dir = PG_BIN[-1]
    root = tempfile.mkdtemp(prefix="quark-pg-")
    data = os.path.join(root, "data")
    as_user: list[str] = []
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
        as_user = ["runuser", "-u", "postgres", "--"] if shutil.which("runuser") else ["su", "postgres", "-c"]

    def run(*argv: str) -> None:
        command = [*as_user, shlex.join(argv)] if as_user[:1] == ["su"] else [*as_user, *argv]
        subprocess.run(command, check=True, capture_output=True, timeout=60)

    port = _free_port()
    try:
        run(os.path.join(bin_dir, "initdb"), "-D", data, "-A", "trust", "-U", "quark", "--no-sync", "-E", "UTF8")
        run(os.path.join(bin_dir, "pg_ctl"), "-D", data, "-w", "-l", os.path.join(root, "log"), "-o",
            f"-p {port} -h 127.0.0.1 -k {root} -c fsync=off -c synchronous_commit=off", "start")
        yield f"postgresql://quark@127.0.0.1:{port}/postgres"
    finally:
        try:
            run(os.path.join(bin_dir, "pg_ctl"), "-D", data, "-m", "immediate", "stop")
        except subprocess.CalledProcessError:
            pass
        shutil.rmtree(root, ignore_errors=True)


def test_two_workers_share_a_postgresql_study(tmp_path, postgres_url):
    space = space_lib.parse_space({
        "quark_jax.OptimizerConfig.learning_rate": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True},
        "quark_jax.ModelConfig.num_layers": {"type": "int", "low": 1, "high": 11}})
    spec = search.StudySpec(study_dir=str(tmp_path / "pg_study"), space=space, trials=6, objective="quadratic",
                            seed=0, storage=postgres_url, sleep_s=0.3)
    search.run_workers(spec, workers=2)
    trials = search.open_study(spec).get_trials()
    assert len(trials) == 6 and sorted(t.number for t in trials) == list(range(6))  # no duplicate numbers
    assert [t.state.name for t in trials] == ["COMPLETE"] * 6
    assert len({t.user_attrs["worker"] for t in trials}) == 2  # both processes took trials from the database
    for t in trials:
        assert t.value == pytest.approx(search.quadratic(space, t.params))
    assert not (tmp_path / "pg_study" / "journal.log").exists()  # the database held the study, not a journal
