"""Where a search's study lives and how its workers coordinate: storage URL, the
cross-process lock, worker identity, failing trials of dead workers, heartbeats.

    url = storage_url(config, workdir)          # config.search.storage or sqlite in W
    with make_lock(url, study_name(config))():  # fcntl file lock (SQLite) / pg advisory lock
        ...                                     # count + ask happen under it (exact trial count)
    reap_dead_trials(study, storage, study_id)  # RUNNING trials of dead local workers -> FAIL

See bt_jax/search.py for the rules these pieces implement.
"""

from __future__ import annotations

from bt_jax.errors import UserError
import contextlib
import hashlib
import logging
import os
import socket
import threading
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import optuna
import sqlalchemy
from optuna.trial import TrialState

log = logging.getLogger(__name__)


@contextlib.contextmanager
def quiet_optuna() -> Iterator[None]:
    """Silences Optuna's notes on features used here on purpose (heartbeats with ask/tell)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        warnings.filterwarnings("ignore", "Heartbeat of storage", UserWarning)
        yield


class SearchError(UserError, RuntimeError):
    """The search cannot go on: no usable backbone, a changed search space, too many failures."""


def storage_url(config, workdir: str | Path) -> str:
    return config.search.storage or f"sqlite:///{Path(workdir).resolve() / 'search.db'}"


def study_name(config) -> str:
    return config.search.study_name or f"{config.name}-search"


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    import fcntl  # POSIX only, like SQLite's own multi-process locking
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def sqlite_file(url: str) -> Path | None:
    """The database file behind a sqlite:/// URL; None for other databases and in-memory ones."""
    u = sqlalchemy.engine.make_url(url)
    if u.get_backend_name() != "sqlite" or not u.database or u.database == ":memory:":
        return None
    return Path(u.database)


def make_lock(url: str, name: str) -> Callable[[], contextlib.AbstractContextManager]:
    """A cross-process mutex for one study on the database behind `url`."""
    backend = sqlalchemy.engine.make_url(url).get_backend_name()
    if backend == "sqlite":
        db = sqlite_file(url)
        if db is None:
            lock = threading.Lock()   # an in-memory database lives in this process only
            return lambda: lock
        path = db.with_suffix(".lock")
        return lambda: file_lock(path)
    if backend == "postgresql":
        engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
        digest = hashlib.sha256(f"bt_jax.tuning:{name}".encode()).digest()
        key = int.from_bytes(digest[:8], "big", signed=True)

        @contextlib.contextmanager
        def pg_lock():
            # Transaction-scoped: released at commit, or by the server if this process dies.
            with engine.begin() as conn:
                conn.execute(sqlalchemy.text("SELECT pg_advisory_xact_lock(:k)"), {"k": key})
                yield
        return pg_lock
    raise SearchError(f"config.search.storage: no cross-process trial lock for {backend!r} "
                      f"databases; use sqlite:///... (one machine) or postgresql://...")


NETWORK_FS = ("nfs", "nfs4", "cifs", "smb3", "smbfs", "lustre", "gpfs", "fuse.sshfs",
              "9p", "ceph", "glusterfs")


def filesystem_type(path: Path) -> str:
    """The type of the mounted filesystem holding `path` (Linux /proc/mounts; "" if unknown)."""
    try:
        lines = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return ""
    mounts = [(where.replace("\\040", " "), kind) for _, where, kind, *_ in
              (line.split() for line in lines)]
    path = Path(path).resolve()
    under = [(len(where), kind) for where, kind in mounts if path.is_relative_to(where)]
    # the deepest mount point; of two at one place, the later (it hides the earlier)
    return max(reversed(under), key=lambda u: u[0])[1] if under else ""


def tune_sqlite(storage: optuna.storages.RDBStorage, url: str) -> None:
    """Write-ahead logging and `synchronous=NORMAL` for a study in a local SQLite file.

    With SQLite's defaults every commit (a search makes ~25 per trial) syncs its rollback
    journal and the database to disk: ~6 s of a 150-trial search on a 2-core VM
    (docs/benchmarks.md, "Head search"). In WAL mode with synchronous=NORMAL a commit survives the
    process being killed (our resume guarantee); only a power cut can lose the last
    trials, and never corrupts the file. WAL needs shared memory between the processes
    that open the file, which network filesystems do not give, so a file there keeps
    SQLite's defaults."""
    db = sqlite_file(url)
    if db is None or filesystem_type(db.parent) in NETWORK_FS:
        return

    @sqlalchemy.event.listens_for(storage.engine, "connect")
    def _pragmas(conn, _record):
        cur = conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()
    storage.engine.dispose()   # connections opened so far get the pragmas too


# ---------------------------------------------------------------- workers

def process_start(pid: int) -> str | None:
    """Start time of `pid` in clock ticks since boot (Linux), so a reused pid is not mistaken."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def host() -> str:
    """This host, and its pid namespace: containers sharing a hostname must not judge each
    other's pids."""
    try:
        ns = os.readlink("/proc/self/ns/pid").strip("pid:[]")
    except OSError:
        return socket.gethostname()
    return f"{socket.gethostname()}@{ns}"


def worker_id() -> str:
    pid = os.getpid()
    return f"{host()}:{pid}:{process_start(pid) or ''}"


def dead_local_worker(worker: str) -> bool:
    where, pid, start = worker.rsplit(":", 2)
    if where != host():
        return False
    if start and Path("/proc/self/stat").exists():
        return process_start(int(pid)) != start
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass
    return False


def reap_dead_trials(study: optuna.Study, storage, study_id: int) -> None:
    """Fails RUNNING trials whose worker is gone; call under the lock. Reads go through
    the study (Optuna's cache keeps finished trials; RUNNING ones are read afresh)."""
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    for t in running:
        worker = t.user_attrs.get("worker")
        if worker and dead_local_worker(worker):
            tid = storage.get_trial_id_from_study_id_trial_number(study_id, t.number)
            with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):
                storage.set_trial_user_attr(
                    tid, "interrupted", f"worker {worker} died while the trial ran")
                storage.set_trial_state_values(tid, TrialState.FAIL)
                log.warning("trial %d: worker %s is gone; marked FAIL (interrupted)",
                            t.number, worker)
    before = {t.number for t in running}
    with quiet_optuna():
        optuna.storages.fail_stale_trials(study)
    after = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
    for number in sorted(before - after):
        log.warning("trial %d is no longer RUNNING (finished, or failed for a stale heartbeat)",
                    number)


@contextlib.contextmanager
def heartbeat(storage, trial_id: int, interval: float) -> Iterator[None]:
    stop = threading.Event()

    def beat():
        while not stop.wait(interval):
            try:
                storage.record_heartbeat(trial_id)
            except Exception as e:  # a missed beat only risks a late stale verdict
                log.warning("heartbeat of trial id %d failed: %s", trial_id, e)

    thread = threading.Thread(target=beat, name=f"heartbeat-{trial_id}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
