"""NIfTI volumes (.nii, .nii.gz) as axial slices, one group per volume.

    zs = select_slices(path, min_area=0.5)   # axial slices whose brain area >= 0.5 x the largest
    img = read_slice(slice_path(path, 42))   # (H, W, 3) float32 in [0, 1], radiological view
    slice_path(Path("a/s01.nii.gz"), 42)     # Path("a/s01.nii.gz#z=42"): how a slice is named
    files = expand(files, cache, min_area)   # discover's records, each volume -> its slices
    paths = expand_paths(paths, min_area)    # the same for predict's input paths

A volume is reoriented to the closest canonical (RAS+) orientation, so axis 2 runs from
inferior to superior whatever the file's affine says; slice z is shown with anterior at
the top and the patient's left on the right (radiological convention). Intensities are
scaled to [0, 1] between the volume's 0.5th and 99.5th percentiles, one window per
volume. The brain area of a slice is its count of voxels above 10% of that upper
percentile. A 4D file, a series acquired in the sagittal or coronal plane (its thickest
voxel side not along the axial axis), or an unreadable file raises VolumeError naming
the file and the reason; `expand` records it as a skipped file instead.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import re
from pathlib import Path

import numpy as np

from bt_jax import io
from bt_jax.data.decode import DecodeError

SUFFIXES = (".nii", ".nii.gz")
_SLICE = re.compile(r"^(.*)#z=(\d+)$")


class VolumeError(DecodeError):
    """A NIfTI file that cannot be sliced (4D, not axial, unreadable); says which and why."""


def is_volume(path) -> bool:
    name = Path(str(path).split("#z=")[0]).name.lower()
    return name.endswith(SUFFIXES)


def slice_path(path, z: int) -> Path:
    return Path(f"{path}#z={int(z)}")


def split_slice(path) -> tuple[Path, int | None]:
    """(the volume's path, z) of a slice path; (path, None) for any other path."""
    m = _SLICE.match(str(path))
    return (Path(m[1]), int(m[2])) if m else (Path(path), None)


@functools.lru_cache(maxsize=2)
def _load(path: str, mtime_ns: int) -> tuple[np.ndarray, float, float]:
    """(canonical float32 volume, window low, window high); the last two volumes cached,
    so the slices of one volume read it once."""
    import nibabel as nib
    try:
        img = nib.load(path)
        shape = img.shape
        if len(shape) == 4 and shape[3] > 1:
            raise VolumeError(f"{path}: a 4D volume (shape {shape}): a time series or several "
                              "volumes in one file; split it into 3D files first")
        if len(shape) not in (3, 4):
            raise VolumeError(f"{path}: expected a 3D volume, got shape {shape}")
        img = nib.as_closest_canonical(img)
        zooms = [float(z) for z in img.header.get_zooms()[:3]]
        thick = int(np.argmax(zooms))
        if thick != 2 and zooms[thick] > 1.5 * zooms[2]:
            plane = "sagittal" if thick == 0 else "coronal"
            raise VolumeError(f"{path}: acquired in the {plane} plane (voxel size "
                              f"{zooms[0]:g} x {zooms[1]:g} x {zooms[2]:g} mm after "
                              "reorientation); only axial series are sliced")
        data = np.asarray(img.get_fdata(dtype=np.float32)).reshape(img.shape[:3])
    except VolumeError:
        raise
    except Exception as e:  # noqa: BLE001 - nibabel raises many kinds; all mean "unreadable"
        raise VolumeError(f"{path}: not a readable NIfTI volume ({type(e).__name__}: {e})") from e
    lo, hi = np.percentile(data, [0.5, 99.5])
    return data, float(lo), float(hi)


def _volume(path) -> tuple[np.ndarray, float, float]:
    p = Path(path)
    return _load(str(p), p.stat().st_mtime_ns)


def select_slices(path, min_area: float) -> list[int]:
    """Axial slices whose brain area is at least `min_area` x the largest slice's."""
    data, _, hi = _volume(path)
    area = (data > 0.1 * hi).sum(axis=(0, 1))
    if area.max() == 0:
        raise VolumeError(f"{path}: blank volume (no voxel above 10% of its upper percentile)")
    return [int(z) for z in np.flatnonzero(area >= min_area * area.max())]


def read_slice(path) -> tuple[np.ndarray, dict]:
    """A slice path (`slice_path`) -> ((H, W, 3) float32 RGB in [0, 1], info)."""
    vol_path, z = split_slice(path)
    data, lo, hi = _volume(vol_path)
    if z is None or not 0 <= z < data.shape[2]:
        raise VolumeError(f"{path}: no axial slice {z} (the volume has {data.shape[2]})")
    img = np.flipud(data[:, :, z].T)  # rows: anterior at the top; columns: left to right
    img = np.clip((img - lo) / max(hi - lo, 1e-6), 0, 1).astype(np.float32)
    info = {"format": "nifti", "width": int(img.shape[1]), "height": int(img.shape[0]),
            "bits": 32, "channels": 1, "slice": z}
    return np.repeat(img[:, :, None], 3, axis=2), info


def expand(files, cache: Path, min_area: float) -> list:
    """discover's records with every volume replaced by the records of its selected
    slices (rel `<file>#z=<z>`, sha256 of the file's and the slice's); a volume that
    cannot be sliced stays one record carrying its error. The selection is cached by
    the file's content and the rule."""
    out = []
    for f in files:
        if not is_volume(f.path):
            out.append(f)
            continue
        key = cache / "volumes" / f"{f.sha256}-{min_area:g}.json"
        if io.exists(key):
            sel = io.read_json(key)
        else:
            try:
                sel = {"slices": select_slices(f.path, min_area), "error": ""}
            except VolumeError as e:
                sel = {"slices": [], "error": str(e)}
            io.atomic_write(key, lambda fh, sel=sel: json.dump(sel, fh), cache=True)
        if sel["error"]:
            out.append(dataclasses.replace(f, is_image_ext=True, error=sel["error"]))
            continue
        for z in sel["slices"]:
            sha = hashlib.sha256(f"{f.sha256}#z={z}".encode()).hexdigest()
            out.append(dataclasses.replace(f, path=slice_path(f.path, z), rel=f"{f.rel}#z={z}",
                                           sha256=sha, is_image_ext=True))
    return out


def expand_paths(paths, min_area: float) -> list[Path]:
    """Input paths with every volume replaced by its selected slices' paths; a volume that
    cannot be sliced stays as it is (reading it then raises its VolumeError)."""
    out = []
    for p in paths:
        if not is_volume(p):
            out.append(p)
            continue
        try:
            out += [slice_path(p, z) for z in select_slices(p, min_area)]
        except VolumeError:
            out.append(p)
    return out


def volume_of(rel: str) -> str | None:
    """The volume a slice's name belongs to ("a/s01.nii.gz#z=4" -> "a/s01.nii.gz")."""
    m = _SLICE.match(rel)
    return m[1] if m else None
