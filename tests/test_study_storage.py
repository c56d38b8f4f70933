"""The study's SQLite file: write-ahead logging on local disks, SQLite's defaults elsewhere."""

import sqlite3

from search_worker import BACKBONES, attrs, make_config, score

from bt_jax import tuning
from bt_jax.tuning import storage as study_storage


def _search(workdir, trials=3):
    def objective(p):
        v = score(p)
        return v, attrs(p, v)
    return tuning.run_search(make_config(trials=trials, seed=1), workdir, objective,
                             progress=False, available_backbones=BACKBONES)


def _journal_mode(db) -> str:
    with sqlite3.connect(db) as conn:
        return conn.execute("PRAGMA journal_mode").fetchone()[0]


def test_a_local_study_file_is_in_wal_mode_and_resumes(tmp_path):
    assert study_storage.filesystem_type(tmp_path) not in ("", *study_storage.NETWORK_FS)
    _search(tmp_path)
    assert _journal_mode(tmp_path / "search.db") == "wal"
    study = _search(tmp_path, trials=5)   # relaunch with a larger plan: resumes, adds two
    assert sorted(t.number for t in study.trials) == list(range(5))


def test_a_study_on_a_network_filesystem_keeps_sqlite_defaults(tmp_path, monkeypatch):
    monkeypatch.setattr(study_storage, "filesystem_type", lambda path: "nfs4")
    _search(tmp_path)
    assert _journal_mode(tmp_path / "search.db") == "delete"


def test_filesystem_type_takes_the_deepest_mount(tmp_path, monkeypatch):
    tmp_path = tmp_path.resolve()
    mounts = (f"rootfs / ext4 rw 0 0\nserver:/x {tmp_path} nfs4 rw 0 0\n"
              f"tmpfs {tmp_path}/a\\040b tmpfs rw 0 0\n"
              f"/dev/sdb {tmp_path}/e ext4 rw 0 0\noverlay {tmp_path}/e overlay rw 0 0\n")
    real_read = study_storage.Path.read_text
    monkeypatch.setattr(study_storage.Path, "read_text",
                        lambda self, *a, **k: mounts if str(self) == "/proc/mounts"
                        else real_read(self, *a, **k))
    (tmp_path / "a b" / "c").mkdir(parents=True)
    assert study_storage.filesystem_type(tmp_path / "a b" / "c") == "tmpfs"
    assert study_storage.filesystem_type(tmp_path / "d") == "nfs4"
    assert study_storage.filesystem_type(tmp_path.parent) == "ext4"
    assert study_storage.filesystem_type(tmp_path / "e") == "overlay"   # the later mount hides
