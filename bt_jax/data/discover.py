"""Find the files of a class-per-folder data set and hash their contents.

    files = discover(Path("../shared/data/brain_mri"), classes=("no", "yes"))
    files[0]  # FileRecord(rel="no/1 no.jpeg", cls="no", label=0, sha256="…", size=…)

Checks the layout before any work: a missing folder, a missing or empty class folder, or
a data set with one class raises DataLayoutError naming the folder. Hidden entries
(a name starting with ".", e.g. `.ipynb_checkpoints/` copies, `.DS_Store`) are never
read: `hidden_entries` lists them for the manifest. Class folders may nest sub-folders.
Files whose
extension is not an image extension are still listed (and later skipped with a reason),
so the manifest accounts for everything in the folder.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from pathlib import Path

from bt_jax.errors import UserError


class DataLayoutError(UserError, ValueError):
    """The data folder does not have the layout the config describes."""


@dataclasses.dataclass(frozen=True)
class FileRecord:
    path: Path          # absolute
    rel: str            # relative to the data folder, '/'-separated
    cls: str            # class folder name
    label: int          # index of cls in the config's class list
    sha256: str         # of the file bytes
    size: int           # bytes
    is_image_ext: bool  # extension among the accepted ones
    error: str = ""     # why it cannot be used at all (e.g. a 4D NIfTI file); "" if none


def _hash(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def check_layout(root: Path, classes: tuple[str, ...]) -> None:
    root = Path(root)
    if not root.is_dir():
        raise DataLayoutError(f"data folder {root} does not exist or is not a folder")
    present = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    missing = [c for c in classes if c not in present]
    if missing:
        raise DataLayoutError(f"class folder(s) {missing} not found in {root}; it has "
                              f"sub-folders {present} (set config.data.classes to match)")
    if len(classes) < 2:
        raise DataLayoutError(f"need at least two classes in {root}, got {list(classes)}")
    for c in classes:
        if not next(visible_files(root / c), None):
            raise DataLayoutError(f"class folder {root / c} is empty (no visible file in it or "
                                  "its sub-folders)")


def class_folders(root: Path) -> tuple[str, ...]:
    """The visible sub-folders of a data folder, sorted: its classes when the config names none."""
    root = Path(root)
    if not root.is_dir():
        raise DataLayoutError(f"data folder {root} does not exist or is not a folder")
    found = tuple(sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")))
    if len(found) < 2:
        raise DataLayoutError(f"{root} has sub-folder(s) {list(found)}: a class per sub-folder "
                              "and at least two classes are needed")
    return found


def _walk(folder: Path):
    """(visible files, hidden entries) under folder; hidden folders are not entered."""
    for dirpath, dirnames, filenames in os.walk(folder):
        d = Path(dirpath)
        hidden = sorted(n for n in dirnames if n.startswith("."))
        dirnames[:] = sorted(n for n in dirnames if not n.startswith("."))
        yield ([d / n for n in sorted(filenames) if not n.startswith(".")],
               [d / n for n in hidden] + [d / n for n in sorted(filenames) if n.startswith(".")])


def visible_files(folder: Path):
    """Every regular file below `folder` that is not hidden nor inside a hidden folder."""
    for files, _ in _walk(folder):
        yield from (p for p in files if p.is_file())


def hidden_entries(root: Path, classes: tuple[str, ...]) -> list[str]:
    """Hidden files and folders inside the class folders (skipped), relative to root."""
    root = Path(root).resolve()
    return [p.relative_to(root).as_posix() for c in classes for _, hid in _walk(root / c)
            for p in hid]


def discover(root: Path, classes: tuple[str, ...], extensions: tuple[str, ...]) -> list[FileRecord]:
    """Every visible regular file under each class folder (recursively), sorted."""
    root = Path(root).resolve()
    check_layout(root, tuple(classes))
    exts = {e.lower() for e in extensions}
    out = []
    for label, cls in enumerate(classes):
        for p in sorted(visible_files(root / cls)):
            out.append(FileRecord(path=p, rel=p.relative_to(root).as_posix(), cls=cls,
                                  label=label, sha256=_hash(p), size=p.stat().st_size,
                                  is_image_ext=p.name.lower().endswith(tuple(exts))))
    return out


def folder_fingerprint(root: Path) -> str:
    """Hash of every path, size and mtime under root: tests use it to prove we wrote nothing."""
    h = hashlib.sha256()
    for p in sorted(Path(root).rglob("*")):
        st = p.stat()
        h.update(f"{p.relative_to(root)}|{st.st_size}|{st.st_mtime_ns}|{p.is_dir()}".encode())
        if p.is_file():
            h.update(_hash(p).encode())
    return h.hexdigest()
