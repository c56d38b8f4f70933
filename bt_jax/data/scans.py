"""Scans to predict on: file/folder/glob discovery, DICOM decoding, colour check.

    files = find_inputs("scans/*")                     # sorted Paths, hidden files skipped
    img, info = read_scan(files[0])                    # (H, W, 3) float32 in [0, 1]
    colour_fraction(img) > COLOUR_FRACTION             # a photograph, not an MRI slice

Images go through bt_jax.data.decode; DICOM through pydicom with the modality LUT
(rescale) and the stored VOI window applied, MONOCHROME1 inverted, multi-frame files
refused unless a frame is chosen.
"""

from __future__ import annotations

import glob
from pathlib import Path

import numpy as np

from bt_jax.data import decode, volumes

COLOUR_FRACTION = 0.05                # share of strongly coloured pixels that flags a photo
COLOUR_CHROMA = 0.15                  # max(RGB) - min(RGB) above this is "strongly coloured"

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".dcm", ".dicom", ".nii",
                  ".nii.gz")


def find_inputs(spec) -> list[Path]:
    """Files named by `spec`: a path, a folder (every file below it, hidden ones excepted),
    a glob pattern, or a list of those. Sorted, without repeats; an empty result raises."""
    specs = [spec] if isinstance(spec, (str, Path)) else list(spec)
    out: list[Path] = []
    for s in specs:
        s = str(s)
        p = Path(s).expanduser()
        if p.is_dir():
            found = [q for q in sorted(p.rglob("*")) if q.is_file()
                     and not any(part.startswith(".") for part in q.relative_to(p).parts)]
        elif p.is_file():
            found = [p]
        elif glob.has_magic(s):
            found = [Path(q) for q in sorted(glob.glob(str(p), recursive=True)) if Path(q).is_file()]
        else:
            raise FileNotFoundError(f"inputs: {s!r} is not a file, a folder or a glob that matches")
        if not found:
            raise FileNotFoundError(f"inputs: nothing found at {s!r}")
        out += found
    return list(dict.fromkeys(q.resolve() for q in out))


def is_dicom(data: bytes, path: Path) -> bool:
    return data[128:132] == b"DICM" or path.suffix.lower() in (".dcm", ".dicom")


def _first(v) -> float:
    """A DICOM value that may be multi-valued (several windows): the first one."""
    try:
        return float(v)
    except TypeError:
        return float(v[0])


def _window(x: np.ndarray, ds) -> tuple[np.ndarray, list | None]:
    """Modality-rescaled values -> [0, 1] by the stored VOI window (DICOM PS3.3 C.11.2.1.2),
    or the image's own range when none is stored."""
    wc, ww = ds.get("WindowCenter"), ds.get("WindowWidth")
    if wc is not None and ww is not None and _first(ww) >= 1:
        c, w = _first(wc), _first(ww)
        fn = str(ds.get("VOILUTFunction", "LINEAR")).upper()
        if fn == "SIGMOID":
            y = 1.0 / (1.0 + np.exp(-4.0 * (x - c) / w))
        elif fn == "LINEAR_EXACT":
            y = (x - c) / w + 0.5
        else:
            y = (x - (c - 0.5)) / (w - 1) + 0.5 if w > 1 else (x >= c).astype(float)
        return np.clip(y, 0, 1), [c, w]
    if "VOILUTSequence" in ds:
        from pydicom.pixels import apply_voi_lut
        x = apply_voi_lut(x, ds).astype(np.float64)
    lo, hi = float(x.min()), float(x.max())
    return (x - lo) / (hi - lo) if hi > lo else np.zeros_like(x), None


def decode_dicom(path: Path, *, frame: int | None = None) -> tuple[np.ndarray, dict]:
    """A single-frame MONOCHROME1/2 (or RGB) DICOM -> (H, W, 3) float32 in [0, 1], info.

    Rescale slope/intercept (modality LUT) then the stored window are applied; MONOCHROME1
    is inverted so that bright means high signal, as in the training images."""
    import pydicom
    from pydicom.errors import InvalidDicomError
    from pydicom.pixels import apply_modality_lut
    try:
        ds = pydicom.dcmread(path, force=path.suffix.lower() in (".dcm", ".dicom"))
    except (InvalidDicomError, EOFError, OSError, ValueError, KeyError, TypeError) as e:
        raise decode.DecodeError(f"unreadable DICOM ({type(e).__name__}: {e})") from None
    if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        raise decode.DecodeError("DICOM without pixel data (e.g. a report or structured document)")
    pi = str(ds.get("PhotometricInterpretation", "")).upper()
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1 and frame is None:
        raise decode.DecodeError(f"multi-frame DICOM ({frames} frames): export one slice, or set "
                                 "predict.dicom_frame to the frame index to use")
    if pi not in ("MONOCHROME1", "MONOCHROME2", "RGB", "YBR_FULL", "YBR_FULL_422"):
        raise decode.DecodeError(f"DICOM PhotometricInterpretation {pi or 'missing'!r} is not "
                                 "supported (expected MONOCHROME1, MONOCHROME2 or RGB)")
    try:
        arr = ds.pixel_array
    except Exception as e:  # noqa: BLE001 - missing codec, truncated data, bad tags
        raise decode.DecodeError(f"DICOM pixel data could not be decoded "
                                 f"({type(e).__name__}: {e})") from None
    if frames > 1:
        if not -frames <= frame < frames:
            raise decode.DecodeError(f"DICOM has {frames} frames, frame {frame} requested")
        arr = arr[frame]
    info = {"format": "dicom", "bits": int(ds.get("BitsStored", 8)), "photometric": pi,
            "frames": frames, "height": int(arr.shape[0]), "width": int(arr.shape[1])}
    if pi.startswith("MONOCHROME"):
        x = np.asarray(apply_modality_lut(arr, ds), np.float64)
        y, info["window"] = _window(x, ds)
        if pi == "MONOCHROME1":
            y = 1.0 - y
        img = np.repeat(y[:, :, None], 3, axis=2)
        info["channels"] = 1
    else:  # pydicom converts YBR to RGB
        img = arr.astype(np.float64) / float(2 ** info["bits"] - 1)
        info["channels"] = 3
    return np.ascontiguousarray(np.clip(img, 0, 1), np.float32), info


def read_scan(path: Path, *, min_size: int = 16, frame: int | None = None):
    """Any supported file -> ((H, W, 3) float32 RGB in [0, 1], info); DecodeError if unusable."""
    path = Path(path)
    if volumes.is_volume(path):  # a slice of a NIfTI volume ("<file>#z=<z>")
        img, info = volumes.read_slice(path)
    else:
        data = path.read_bytes()
        if len(data) and is_dicom(data, path):
            img, info = decode_dicom(path, frame=frame)
        else:
            img, info = decode.decode_bytes(data)
    decode.check_usable(img, min_size)
    return img, info


def colour_fraction(img: np.ndarray) -> float:
    """Share of pixels whose channels differ strongly: ~0 for MRI slices (grey), large for a
    colour photograph. Counted on a downsampled copy: it is a screening statistic."""
    step = max(1, min(img.shape[:2]) // 256)
    x = img[::step, ::step]
    return float(np.mean(x.max(axis=2) - x.min(axis=2) > COLOUR_CHROMA))
