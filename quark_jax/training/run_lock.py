"""One writer per run directory: a lease file, ``MODEL_DIR/writer.lease``.

The lease is a small JSON object -- ``host``, ``pid``, a unique ``token``, ``started`` (when it was taken) and
``heartbeat`` (refreshed every ``heartbeat_s`` seconds by a daemon thread), all times in seconds since the
epoch. :class:`RunLease` takes it before a run writes anything in the directory and gives it back when the run
ends, however it ends. A second writer is refused with :class:`RunDirBusyError`, whose message names the
holder. A lease is *stale*, and is taken over with a warning, when its heartbeat is older than
``stale_after_s``, or when it was taken on this host by a process that no longer exists.

Storage goes through :class:`LeaseStore`, four operations that a bucket offers as well as a POSIX file
system:

* ``create(data)`` -- create the object only if it does not exist (``O_CREAT | O_EXCL`` here; on GCS an
  upload with ``ifGenerationMatch=0``); returns a *generation* or ``None`` if the object exists.
* ``read()`` -- ``(data, generation)`` or ``None``.
* ``replace(data, generation)`` -- overwrite only if the object is still at ``generation`` (GCS:
  ``ifGenerationMatch=generation``); returns the new generation or ``None``.
* ``delete(generation)`` -- delete only if still at ``generation``.

:class:`LocalLeaseStore` implements them with a file, using the token of the content as the generation (the
compare and the swap are two calls locally; only a writer taking over a stale lease races with another, and
the rename-aside in :meth:`LocalLeaseStore.replace` makes the loser of that race see ``None``). The local
heartbeat (:meth:`LocalLeaseStore.refresh`) reads, then replaces the file atomically: if a take-over lands
between the two, the old holder's beat overwrites the new lease, and the new holder finds its token gone at its
next beat and stops (:class:`LeaseLostError`) -- either way one writer goes on.

:class:`ObjectLeaseStore` keeps the lease on an object store (``gs://``, ``s3://``), through ``etils.epath``,
which offers no conditional write. It is *write, wait, read back*: ``create`` looks for the object, writes its
own lease, waits ``settle_s`` and reads the object again; the writer whose token it finds there holds the
lease, any other gets ``None`` (and, the lease being live, :class:`RunDirBusyError`). What this guarantees,
honestly: a writer that starts after another's lease is readable is always refused; two writers that start
within the same moment cannot both pass the read-back unless their writes land in the order opposite to their
read-backs, and then the one whose lease was overwritten finds a foreign token at its next heartbeat (every
beat reads before it writes) and stops with :class:`LeaseLostError` at the next step boundary. So on an object
store two writers overlap for at most one heartbeat plus one step, never silently for a whole run. A store
with generation preconditions (GCS ``ifGenerationMatch``) would make ``create`` and ``replace`` exact; they
would implement the same four calls and be passed to :class:`RunLease` unchanged. Staleness compares wall
clocks across hosts: keep ``stale_after_s`` well above clock skew.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from typing import Any, Protocol

from quark_jax import run_paths

log = logging.getLogger(__name__)

LEASE_FILE = "writer.lease"


class RunDirBusyError(RuntimeError):
    """Another live process holds the run directory's lease; the message names it (host, pid, since when)."""


class LeaseLostError(RuntimeError):
    """This process's lease was taken over (it looked stale to another writer) while the run went on."""


class LeaseStore(Protocol):
    def create(self, data: dict) -> Any | None: ...
    def read(self) -> tuple[dict, Any] | None: ...
    def replace(self, data: dict, generation: Any) -> Any | None: ...
    def delete(self, generation: Any) -> bool: ...


def _delete_if_held(store: LocalLeaseStore | ObjectLeaseStore, generation: Any) -> bool:
    """Removes the store's lease if it is still at ``generation`` (ours); False if it is gone or someone else's."""
    current = store.read()
    if current is None or current[1] != generation:
        return False
    try:
        run_paths.remove(store.path)
    except FileNotFoundError:
        return False
    return True


class LocalLeaseStore:
    """A lease in a local (or NFS) file; the generation of the content is its ``token``."""

    def __init__(self, path: str):
        self.path = path

    def create(self, data: dict) -> Any | None:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return None
        with os.fdopen(fd, "w") as f:
            json.dump(data, f)
            f.flush()
            os.fsync(f.fileno())
        return data["token"]

    def read(self) -> tuple[dict, Any] | None:
        for _ in range(5):  # a reader may see the file between its creation and its first write
            try:
                with open(self.path) as f:
                    text = f.read()
            except FileNotFoundError:
                return None
            try:
                data = json.loads(text)
                return data, data.get("token")
            except ValueError:
                time.sleep(0.05)
        return {"token": None, "unreadable": text[:200]}, None

    def replace(self, data: dict, generation: Any) -> Any | None:
        current = self.read()
        if current is None or current[1] != generation:
            return None
        # Move the current object aside under a unique name: of two writers replacing the same generation only
        # one rename succeeds, and the winner checks that it moved the generation it read.
        aside = f"{self.path}.{data['token']}.old"
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return None
        try:
            with open(aside) as f:
                moved = json.loads(f.read() or "{}").get("token")
        except ValueError:
            moved = None
        if moved != generation:  # someone else's newer lease: put it back
            os.rename(aside, self.path)
            return None
        os.remove(aside)
        tmp = f"{self.path}.{data['token']}.tmp"
        with open(tmp, "w") as f:
            json.dump(data, f)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, self.path)  # fails if a third writer created the lease in between
        except FileExistsError:
            return None
        finally:
            os.remove(tmp)
        return data["token"]

    def refresh(self, data: dict, generation: Any) -> Any | None:
        """Rewrites our own lease (the heartbeat): atomic, and refused if the lease is no longer ours."""
        current = self.read()
        if current is None or current[1] != generation:
            return None
        tmp = f"{self.path}.{data['token']}.tmp"
        with open(tmp, "w") as f:
            json.dump(data, f)
        os.replace(tmp, self.path)
        return data["token"]

    def delete(self, generation: Any) -> bool:
        return _delete_if_held(self, generation)


class ObjectLeaseStore:
    """A lease object on an object store (any ``etils.epath`` URL); the generation of the content is its
    ``token``. No conditional writes: each write is read back after ``settle_s`` (see the module docstring
    for what that guarantees)."""

    def __init__(self, path: str, settle_s: float = 0.5):
        self.path = path
        self.settle_s = settle_s

    def _write_and_confirm(self, data: dict) -> Any | None:
        run_paths.write_text(self.path, json.dumps(data))
        time.sleep(self.settle_s)  # let a racing writer's upload land before we look
        current = self.read()
        return data["token"] if current is not None and current[1] == data["token"] else None

    def create(self, data: dict) -> Any | None:
        if self.read() is not None:
            return None
        return self._write_and_confirm(data)

    def read(self) -> tuple[dict, Any] | None:
        try:
            text = run_paths.read_text(self.path)
        except FileNotFoundError:
            return None
        try:
            data = json.loads(text)
        except ValueError:  # an object is written whole: a torn one is damaged, and stale
            return {"token": None, "unreadable": text[:200]}, None
        return data, data.get("token")

    def replace(self, data: dict, generation: Any) -> Any | None:
        current = self.read()
        if current is None or current[1] != generation:
            return None
        return self._write_and_confirm(data)

    def refresh(self, data: dict, generation: Any) -> Any | None:
        """The heartbeat: reads, and rewrites only a lease that is still ours (no wait: a take-over that lands
        in between is seen at the next beat by one of the two, and that one stops)."""
        current = self.read()
        if current is None or current[1] != generation:
            return None
        run_paths.write_text(self.path, json.dumps(data))
        return data["token"]

    def delete(self, generation: Any) -> bool:
        return _delete_if_held(self, generation)


def lease_store(run_dir: str) -> LeaseStore:
    """The store for ``run_dir``'s lease: a local file, or an object on the run directory's object store."""
    if run_paths.is_local(run_dir):
        return LocalLeaseStore(os.path.join(run_dir, LEASE_FILE))
    return ObjectLeaseStore(run_paths.join(run_dir, LEASE_FILE))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def describe(holder: dict) -> str:
    started = holder.get("started")
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)) if isinstance(started, (int, float)) else "?"
    beat = holder.get("heartbeat")
    age = f", last heartbeat {time.time() - beat:.0f} s ago" if isinstance(beat, (int, float)) else ""
    return f"host {holder.get('host', '?')} pid {holder.get('pid', '?')} since {since}{age}"


class RunLease:
    """The writer's lease on a run directory: ``acquire()``, then ``release()`` (or use it as a context).

    ``lost`` becomes true if the heartbeat finds the lease no longer ours; the trainer checks it at step
    boundaries (:meth:`check`)."""

    def __init__(self, run_dir: str, stale_after_s: float = 60.0, heartbeat_s: float | None = None,
                 store: LeaseStore | None = None):
        self.run_dir = run_dir
        self.store = store if store is not None else lease_store(run_dir)
        self.stale_after_s = float(stale_after_s)
        self.heartbeat_s = heartbeat_s if heartbeat_s is not None else max(min(5.0, self.stale_after_s / 4), 0.05)
        self.token = uuid.uuid4().hex
        self.data = {"host": socket.gethostname(), "pid": os.getpid(), "token": self.token,
                     "started": time.time(), "heartbeat": time.time()}
        self._generation = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.lost = False

    def _is_stale(self, holder: dict) -> str | None:
        """Why ``holder`` is stale, or None if it is live."""
        if holder.get("token") is None:
            return "its lease file is unreadable"
        beat = holder.get("heartbeat")
        if not isinstance(beat, (int, float)):
            return "it has no heartbeat"
        if time.time() - beat > self.stale_after_s:
            return f"its heartbeat is {time.time() - beat:.0f} s old (> {self.stale_after_s:g} s)"
        if holder.get("host") == self.data["host"] and isinstance(holder.get("pid"), int) \
                and not _pid_alive(holder["pid"]):
            return f"process {holder['pid']} no longer exists on this host"
        return None

    def acquire(self) -> RunLease:
        for _ in range(10):
            self.data["started"] = self.data["heartbeat"] = time.time()
            generation = self.store.create(self.data)
            if generation is None:
                current = self.store.read()
                if current is None:  # released in between: try again
                    continue
                holder, held_generation = current
                reason = self._is_stale(holder)
                if reason is None:
                    raise RunDirBusyError(f"{self.run_dir} is being written by another run ({describe(holder)}); "
                                          f"wait for it to finish or stop it (lease: {LEASE_FILE})")
                generation = self.store.replace(self.data, held_generation)
                if generation is None:
                    continue  # another writer took it over first: look again
                log.warning("took over the stale lease of %s in %s: %s", describe(holder), self.run_dir, reason)
            self._generation = generation
            self._thread = threading.Thread(target=self._beat, name="run-lease-heartbeat", daemon=True)
            self._thread.start()
            return self
        raise RunDirBusyError(f"{self.run_dir}: could not take the writer lease (other writers keep taking it)")

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            data = {**self.data, "heartbeat": time.time()}
            try:
                refresh = getattr(self.store, "refresh", self.store.replace)
                generation = refresh(data, self._generation)
            except OSError as e:  # a transient storage error: try again at the next beat
                log.warning("could not refresh the run lease in %s: %s", self.run_dir, e)
                continue
            if generation is None:
                self.lost = True
                log.error("the run lease of %s was taken over by another writer", self.run_dir)
                return
            self._generation, self.data = generation, data

    def check(self) -> None:
        if self.lost:
            current = self.store.read()
            holder = describe(current[0]) if current else "nobody"
            raise LeaseLostError(f"lost the writer lease of {self.run_dir} (now held by {holder}); stopping")

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        if self._generation is not None and not self.lost:
            try:
                self.store.delete(self._generation)
            except OSError as e:
                log.warning("could not remove the run lease in %s: %s", self.run_dir, e)
        self._generation = None

    def __enter__(self) -> RunLease:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
