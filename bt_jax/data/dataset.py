"""The prepared data set: discover -> decode -> preprocess (cached) -> de-duplicate -> split.

    ds = prepare_dataset(config, workdir)      # writes workdir/manifest.{json,csv}
    ds.images[ds.splits.test]                  # (n_test, S, S, 3) float32 in [0, 1], read from disk
    ds.labels                                  # 1 = config.data.positive, 0 = other
    # with C > 2 classes: ds.labels = ds.class_index (0..C-1), ds.multiclass is True

Only one copy of each exact-duplicate group is used (the others are listed in the
manifest with the split of their kept copy), so a duplicate can never straddle a split.
Per-file results (crop, hashes, skip reasons) are cached under
workdir/cache/preprocessed/<params key>/<file sha256>.json and the images in one on-disk
store beside them (`store.py`), so a rerun, or a run on a folder with a few new files,
decodes only what is new, and memory does not grow with the number of scans.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from bt_jax import io
from bt_jax.config import ConfigError, check_classes
from bt_jax.data import decode, discover, manifest, phantoms, preprocess, split, store, volumes
from bt_jax.data.store import ImageStore

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Dataset:
    images: store.ImageRows     # (N, S, S, 3) float32 read from disk by index, used images only
    labels: np.ndarray          # (N,) int32 target: 1 = positive of two; the class index of C > 2
    class_index: np.ndarray     # (N,) int32 index into classes
    names: list[str]            # relative paths of used images
    sha256: list[str]
    classes: tuple[str, ...]
    positive: str
    splits: split.Splits
    synthetic: bool
    root: Path
    records: list[dict]         # one manifest row per file seen (used or not)
    cache_hits: int = 0
    hidden: list = dataclasses.field(default_factory=list)  # dot-files/folders not read
    groups: np.ndarray | None = None  # split group per used image (duplicates stay together)
    negative_classes: tuple[str, ...] = ()  # C > 2: the "no tumour" classes (binary view)

    @property
    def multiclass(self) -> bool:
        return len(self.classes) > 2

    @property
    def label_of(self) -> dict[str, int]:
        """Class name -> training label (the positive class is 1 of two, else the index)."""
        return {c: (i if self.multiclass else int(c == self.positive))
                for i, c in enumerate(self.classes)}

    @property
    def label_names(self) -> tuple[str, ...]:
        """Class names in label order: (negative, positive) of two, else the classes."""
        return tuple(sorted(self.classes, key=self.label_of.__getitem__))

    @property
    def content_key(self) -> str:
        """Identifies the used images, in order, as stored (for feature caches downstream)."""
        stored = getattr(self.images, "stored_dtype", np.dtype(np.uint16))
        blob = "|".join(self.sha256) + ("" if stored == np.uint16 else f"|{stored.name}")
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _process(rec: discover.FileRecord, params: preprocess.PreprocessParams, cache: Path,
             min_size: int, store: ImageStore | None) -> tuple[dict, np.ndarray | None, bool]:
    """Returns (meta, image or None, cache_hit). The image is None when it failed, or when
    `store` already holds it (a hit). Decoding errors become a skip reason."""
    if rec.error:  # e.g. a 4D NIfTI file: recorded as skipped with its reason
        return {"ok": False, "reason": rec.error}, None, False
    meta_p = cache / f"{rec.sha256}.json"
    if meta_p.exists():
        meta = json.loads(meta_p.read_text())
        if not meta["ok"] or (store is not None and rec.sha256 in store.row_of):
            return meta, None, True
        legacy = cache / f"{rec.sha256}.npy"  # the per-file cache of earlier versions
        if legacy.exists():
            return meta, np.load(legacy).astype(np.float32) / 65535.0, True
    if not rec.is_image_ext:
        meta = {"ok": False, "reason": f"not an image extension ({rec.path.suffix or 'none'})"}
        return meta, None, False  # not cached: depends on the name, not the content
    img = None
    try:
        if volumes.is_volume(rec.path):  # a slice "<file>#z=<z>" of a NIfTI volume
            raw, info = volumes.read_slice(rec.path)
            decode.check_usable(raw, min_size)
        else:
            raw, info = decode.decode_file(rec.path, min_size=min_size)
        out, pinfo = preprocess.preprocess_image(raw, params)
        meta = {"ok": True, "reason": "", **info, **pinfo,
                "pixel_hash": decode.pixel_hash(raw), "phash": str(decode.perceptual_hash(raw)),
                "thumb": decode.thumb_to_text(decode.thumbnail(raw))}
        img = out
    except (decode.DecodeError, OSError) as e:
        meta = {"ok": False, "reason": str(e)}
    except Exception as e:  # noqa: BLE001 - one bad file must not stop the run
        meta = {"ok": False, "reason": f"{type(e).__name__}: {e}"}
    io.atomic_write(meta_p, lambda f: json.dump(meta, f), cache=True)
    return meta, img, False


def _known_failure(rec: discover.FileRecord, cache: Path) -> bool:
    meta_p = cache / f"{rec.sha256}.json"
    return (not rec.is_image_ext or bool(rec.error)
            or (meta_p.exists() and not json.loads(meta_p.read_text())["ok"]))


def _preprocess_all(recs, params, cache: Path, min_size: int, dtype: str,
                    progress: bool) -> tuple[list[dict], ImageStore, int]:
    """(meta per record, the store holding every usable one, cache hits). Reuses the
    newest store when it holds them all; else writes a new one, copying what it can."""
    old = store.ImageStore.latest(cache / f"store-{dtype}")
    shape = (params.size, params.size, 3)
    # A row for every file that may turn out usable: known failures need none.
    want = [r for r in recs if not _known_failure(r, cache)]
    complete = old is not None and all(r.sha256 in old.row_of for r in want) \
        and old.shape[1:] == shape
    writer = None if complete else store.StoreWriter(cache / f"store-{dtype}", len(want),
                                                     shape, dtype)
    row_of = {r.sha256: i for i, r in enumerate(want)}
    metas, hits = [], 0

    def work(rec):
        return _process(rec, params, cache, min_size, old)

    try:
        with ThreadPoolExecutor(max_workers=max(1, min(8, os.cpu_count() or 1))) as pool:
            bar = None
            if progress:
                from tqdm import tqdm
                bar = tqdm(total=len(recs), desc="preprocess", unit="img", leave=False)
            for s in range(0, len(recs), 256):  # chunks: only a chunk's images in memory
                chunk = recs[s:s + 256]
                for rec, (meta, img, hit) in zip(chunk, pool.map(work, chunk)):
                    metas.append(meta)
                    hits += hit
                    if writer is not None and meta["ok"]:
                        if img is None:
                            writer.copy(row_of[rec.sha256], old, rec.sha256)
                        else:
                            writer.put(row_of[rec.sha256], img)
                if bar is not None:
                    bar.update(len(chunk))
            if bar is not None:
                bar.close()
        if writer is None:
            return metas, old, hits
        ok = {r.sha256 for r, m in zip(recs, metas) if m["ok"]}
        new = writer.commit([r.sha256 if r.sha256 in ok else "" for r in want])
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    store.remove_others(new.path.parent, new)
    log.info("image store: %d images (%s) at %s", len(ok), dtype, new.path)
    return metas, new, hits


def resolve_data_dir(config, workdir: Path) -> tuple[Path, bool]:
    """The configured folder, or freshly written phantoms when config.data.dir is empty."""
    if config.data.dir:
        root = Path(config.data.dir).expanduser()
        return root, phantoms.is_synthetic(root)
    ph, classes = config.data.phantoms, tuple(config.data.classes) or ("no", "yes")
    out = Path(workdir) / "synthetic_phantoms"
    if len(classes) > 2:  # tumour types: one lesion type per class, no lesion for "no tumour"
        unknown = [c for c in classes if c not in phantoms.LESION_TYPES]
        if unknown:
            raise ConfigError(f"config.data.classes: {unknown} are not phantom lesion types "
                              f"{list(phantoms.LESION_TYPES)} (data.dir is empty, so phantoms "
                              "are drawn); set data.dir or use those names")
        root = phantoms.write_typed_phantoms(out, n_per_class=ph.n_per_class, size=ph.size,
                                             seed=config.seed, class_names=classes)
    else:
        root = phantoms.write_phantoms(out, n_per_class=ph.n_per_class, size=ph.size,
                                       seed=config.seed, classes=classes)
    return root, True


def _split(config, labels, groups, root) -> split.Splits:
    try:
        return split.make_splits(labels, groups, test_fraction=config.split.test_fraction,
                                 val_fraction=config.split.val_fraction, k=config.split.k,
                                 seed=config.seed)
    except ValueError as e:
        raise discover.DataLayoutError(
            f"cannot split {root}: {e}. Groups are exact and near-duplicates (and the slices "
            "of one volume); if near-duplicates chain many different scans together, lower "
            "config.data.near_duplicate_bits or set config.data.group_near_duplicates=False "
            "(see manifest.csv)") from e


def prepare_dataset(config, workdir: Path, *, progress: bool = True) -> Dataset:
    workdir = Path(workdir)
    root, synthetic = resolve_data_dir(config, workdir)
    classes = tuple(config.data.classes) or discover.class_folders(root)
    check_classes(config, classes)
    files = discover.discover(root, classes, tuple(config.data.extensions))
    # NIfTI volumes -> their axial slices (one split group per volume, see manifest)
    files = volumes.expand(files, workdir / "cache", config.data.nifti_min_area)
    params = preprocess.PreprocessParams.from_config(config.preprocess)
    # min_size decides which files are skipped as tiny: part of what the cache holds.
    cache = workdir / "cache" / "preprocessed" / f"{params.key()}-min{int(config.data.min_size)}"
    cache.mkdir(parents=True, exist_ok=True)

    # Byte-identical files are processed once (the name matters only for the extension).
    first = {}
    for i, f in enumerate(files):
        first.setdefault((f.sha256, f.is_image_ext), i)
    todo = sorted(first.values())
    metas, images_store, hits = _preprocess_all([files[i] for i in todo], params, cache,
                                                config.data.min_size, config.data.store_dtype,
                                                progress)
    done = dict(zip(todo, metas))
    results = [done[first[(f.sha256, f.is_image_ext)]] for f in files]
    log.info("preprocessed %d distinct files (%d reused from cache %s)", len(todo), hits, cache)

    t0 = time.perf_counter()
    rows = manifest.dedupe(files, results, config.data.near_duplicate_bits,
                           config.data.near_duplicate_min_corr)
    log.info("de-duplicated %d images in %.1f s", len(rows), time.perf_counter() - t0)
    used = [i for i, r in enumerate(rows) if r["status"] == "used"]
    if not used:
        reasons = manifest.summary(rows)["skip_reasons"]
        raise discover.DataLayoutError(f"no usable images in {root} (skipped: {reasons})")
    cls_idx = np.array([files[i].label for i in used], np.int32)
    labels = (cls_idx if len(classes) > 2 else
              (cls_idx == classes.index(config.data.positive))).astype(np.int32)
    present = sorted(set(cls_idx.tolist()))
    if len(present) < len(classes):
        missing = [c for i, c in enumerate(classes) if i not in present]
        raise discover.DataLayoutError(f"class(es) {missing} have no usable image in {root}; "
                                       "every class needs some (see manifest.csv for skips)")
    groups = manifest.split_groups(rows, used, config.data.group_near_duplicates)
    splits = _split(config, labels, groups, root)
    manifest.assign_splits(rows, used, splits)
    images = images_store.rows([files[i].sha256 for i in used])
    ds = Dataset(images=images, labels=labels, class_index=cls_idx,
                 names=[files[i].rel for i in used], sha256=[files[i].sha256 for i in used],
                 classes=classes, positive=config.data.positive if len(classes) == 2 else "",
                 negative_classes=tuple(config.data.negative_classes), splits=splits,
                 synthetic=synthetic, root=root, records=rows, cache_hits=hits,
                 hidden=discover.hidden_entries(root, classes), groups=groups)
    manifest.write(workdir, ds, params)
    log.info("manifest written: %d used of %d files", len(used), len(files))
    return ds
