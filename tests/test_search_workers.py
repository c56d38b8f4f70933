"""Tests of bt_jax.tuning with real worker processes: kill -9 and resume, two workers on
one SQLite file, two "machines" on one PostgreSQL database (tests/search_worker.py)."""

from __future__ import annotations

import csv
import glob
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from optuna.trial import TrialState

sys.path.insert(0, str(Path(__file__).parent))
from helpers import free_port  # noqa: E402
from search_worker import by_state, load_study, make_config  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).with_name("search_worker.py")


def _launch(tmp_path, tag, *args):
    out = open(tmp_path / f"{tag}.log", "w")
    env = dict(os.environ, PYTHONPATH=f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    return subprocess.Popen([sys.executable, str(WORKER), *map(str, args)], cwd=REPO, env=env,
                            stdout=out, stderr=subprocess.STDOUT)


def _wait(condition, timeout, procs, tmp_path):
    end = time.monotonic() + timeout
    while not condition():
        dead = [p for p in procs if p.poll() not in (None, 0)]
        if dead or time.monotonic() > end:
            logs = "\n".join(f.read_text()[-3000:] for f in tmp_path.glob("*.log"))
            raise AssertionError(f"workers failed or timed out; logs:\n{logs}")
        time.sleep(0.05)


def test_kill_and_resume(tmp_path):
    c, w, marker = make_config(trials=7), tmp_path / "w", tmp_path / "hang"
    p = _launch(tmp_path, "first", "--workdir", w, "--trials", 7, "--sleep", 0.05,
                "--hang-on-call", 4, "--marker", marker)
    _wait(marker.exists, 90, [p], tmp_path)  # trials 0-2 complete, trial 3 running
    p.send_signal(signal.SIGKILL)
    p.wait()
    before = by_state(load_study(c, w))
    assert len(before[TrialState.COMPLETE]) == 3 and [t.number for t in
                                                      before[TrialState.RUNNING]] == [3]

    p = _launch(tmp_path, "second", "--workdir", w, "--trials", 7)
    _wait(lambda: p.poll() == 0, 90, [p], tmp_path)
    study = load_study(c, w)
    after = by_state(study)
    assert len(after[TrialState.COMPLETE]) == 7 and set(after) == {TrialState.COMPLETE,
                                                                   TrialState.FAIL}
    assert sorted(t.number for t in study.trials) == list(range(8))
    [interrupted] = after[TrialState.FAIL]
    assert interrupted.number == 3 and "died" in interrupted.user_attrs["interrupted"]
    kept = {t.number: (t.params, t.value) for t in after[TrialState.COMPLETE]}
    assert all(kept[t.number] == (t.params, t.value) for t in before[TrialState.COMPLETE])
    rows = list(csv.DictReader(open(w / "trials.csv")))
    assert [r["state"] for r in rows].count("COMPLETE") == 7 and len(rows) == 8


def _two_workers(tmp_path, trials, storage, workdirs):
    go = tmp_path / "go"
    ready = [tmp_path / f"ready{i}" for i in range(2)]
    procs = [_launch(tmp_path, f"worker{i}", "--workdir", workdirs[i], "--storage", storage,
                     "--trials", trials, "--sleep", 0.15, "--ready", ready[i], "--go", go)
             for i in range(2)]
    _wait(lambda: all(r.exists() for r in ready), 90, procs, tmp_path)
    go.touch()
    _wait(lambda: all(p.poll() == 0 for p in procs), 120, procs, tmp_path)
    c = make_config(trials, storage=storage)
    study = load_study(c, workdirs[0])
    states = by_state(study)
    assert len(states[TrialState.COMPLETE]) == trials and set(states) == {TrialState.COMPLETE}
    assert sorted(t.number for t in study.trials) == list(range(trials))
    pids = [t.user_attrs["worker"].rsplit(":", 2)[1] for t in study.trials]
    assert set(pids) == {str(p.pid) for p in procs}, "both workers should have run trials"
    assert len({tuple(sorted(t.params.items())) for t in study.trials}) == trials
    for wd in set(workdirs):
        assert len(list(csv.DictReader(open(Path(wd) / "trials.csv")))) == trials


def test_two_workers_share_an_sqlite_study(tmp_path):
    _two_workers(tmp_path, 12, "", [tmp_path / "w", tmp_path / "w"])


@pytest.fixture
def postgres_url():
    """A throw-away PostgreSQL server on 127.0.0.1 (Debian's `postgresql` package)."""
    initdb = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),  # newest version last
                    key=lambda b: [int(x) for x in Path(b).parts[-3].split(".") if x.isdigit()])
    initdb = initdb or [shutil.which("initdb")]
    if not initdb[-1]:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) not found: "
                    "apt-get install postgresql to run this test")
    pytest.importorskip("psycopg2", reason="psycopg2 (psycopg2-binary) not installed")
    bindir = Path(initdb[-1]).parent
    user = None
    root = Path(tempfile.mkdtemp(prefix="bt_jax_pg_"))
    if os.geteuid() == 0:  # initdb refuses root: run the server as the package's user
        try:
            pw = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no 'postgres' user to run the server")
        user = "postgres"
        os.chmod(root, 0o755)
        os.chown(root, pw.pw_uid, pw.pw_gid)
    port = free_port()

    def run(*cmd):
        r = subprocess.run([str(bindir / cmd[0]), *map(str, cmd[1:])], user=user, cwd=root,
                           capture_output=True, text=True, timeout=60)
        if r.returncode:
            log = root / "server.log"
            raise RuntimeError(f"{cmd[0]} failed: {r.stderr}\n"
                               f"{log.read_text() if log.exists() else ''}")

    try:
        run("initdb", "-D", root / "data", "-A", "trust", "-U", "postgres", "-E", "UTF8",
            "--no-sync")
        run("pg_ctl", "-D", root / "data", "-l", root / "server.log", "-w", "-t", "30", "-o",
            f"-c listen_addresses=127.0.0.1 -p {port} -k {root} -c fsync=off", "start")
        try:
            run("createdb", "-h", "127.0.0.1", "-p", port, "-U", "postgres", "bt_jax_search")
            yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}/bt_jax_search"
        finally:
            run("pg_ctl", "-D", root / "data", "-m", "immediate", "-w", "stop")
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_two_workers_share_a_postgresql_study(tmp_path, postgres_url):
    # Separate workdirs, as on two machines: the study lives only in the database.
    _two_workers(tmp_path, 12, postgres_url, [tmp_path / "m1", tmp_path / "m2"])
