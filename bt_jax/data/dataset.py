"""The prepared data set: discover -> decode -> preprocess (cached) -> de-duplicate -> split.

    ds = prepare_dataset(config, workdir)      # writes workdir/manifest.{json,csv}
    ds.images[ds.splits.test]                  # (n_test, S, S, 3) float32 in [0, 1]
    ds.labels                                  # 1 = config.data.positive, 0 = other
    # with C > 2 classes: ds.labels = ds.class_index (0..C-1), ds.multiclass is True

Only one copy of each exact-duplicate group is used (the others are listed in the
manifest with the split of their kept copy), so a duplicate can never straddle a split.
Per-file results are cached under workdir/cache/preprocessed/<params key>/<file sha256>,
so a rerun, or a run on a folder with a few new files, decodes only what is new.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from bt_jax import io
from bt_jax.config import ConfigError, check_classes
from bt_jax.data import decode, discover, manifest, phantoms, preprocess, split

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Dataset:
    images: np.ndarray          # (N, S, S, 3) float32, used (unique) images only
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
        """Identifies the used images, in order (for feature caches downstream)."""
        return hashlib.sha256("|".join(self.sha256).encode()).hexdigest()[:16]


def _process(rec: discover.FileRecord, params: preprocess.PreprocessParams, cache: Path,
             min_size: int) -> tuple[dict, np.ndarray | None, bool]:
    """Returns (meta, image or None, cache_hit). Decoding errors become a skip reason."""
    meta_p, img_p = cache / f"{rec.sha256}.json", cache / f"{rec.sha256}.npy"
    if meta_p.exists() and (img_p.exists() or not json.loads(meta_p.read_text())["ok"]):
        meta = json.loads(meta_p.read_text())
        img = np.load(img_p).astype(np.float32) / 65535.0 if meta["ok"] else None
        return meta, img, True
    if not rec.is_image_ext:
        meta = {"ok": False, "reason": f"not an image extension ({rec.path.suffix or 'none'})"}
        return meta, None, False  # not cached: depends on the name, not the content
    try:
        raw, info = decode.decode_file(rec.path, min_size=min_size)
        out, pinfo = preprocess.preprocess_image(raw, params)
        meta = {"ok": True, "reason": "", **info, **pinfo,
                "pixel_hash": decode.pixel_hash(raw), "phash": str(decode.perceptual_hash(raw))}
        q = np.round(out * 65535).astype(np.uint16)  # 16-bit keeps 16-bit scans' depth
        io.atomic_write(img_p, lambda f: np.save(f, q), binary=True, cache=True)
        img = q.astype(np.float32) / 65535.0
    except (decode.DecodeError, OSError) as e:
        meta, img = {"ok": False, "reason": str(e)}, None
    except Exception as e:  # noqa: BLE001 - one bad file must not stop the run
        meta, img = {"ok": False, "reason": f"{type(e).__name__}: {e}"}, None
    io.atomic_write(meta_p, lambda f: json.dump(meta, f), cache=True)
    return meta, img, False


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


def prepare_dataset(config, workdir: Path, *, progress: bool = True) -> Dataset:
    workdir = Path(workdir)
    root, synthetic = resolve_data_dir(config, workdir)
    classes = tuple(config.data.classes) or discover.class_folders(root)
    check_classes(config, classes)
    files = discover.discover(root, classes, tuple(config.data.extensions))
    params = preprocess.PreprocessParams.from_config(config.preprocess)
    # min_size decides which files are skipped as tiny: part of what the cache holds.
    cache = workdir / "cache" / "preprocessed" / f"{params.key()}-min{int(config.data.min_size)}"
    cache.mkdir(parents=True, exist_ok=True)

    def work(rec):
        return _process(rec, params, cache, config.data.min_size)

    # Byte-identical files are processed once (the name matters only for the extension).
    first = {}
    for i, f in enumerate(files):
        first.setdefault((f.sha256, f.is_image_ext), i)
    todo = sorted(first.values())
    with ThreadPoolExecutor(max_workers=max(1, min(8, os.cpu_count() or 1))) as pool:
        it = pool.map(work, [files[i] for i in todo])
        if progress:
            from tqdm import tqdm
            it = tqdm(it, total=len(todo), desc="preprocess", unit="img", leave=False)
        done = dict(zip(todo, it))
    results = [done[first[(f.sha256, f.is_image_ext)]] for f in files]
    hits = sum(hit for _, _, hit in done.values())
    log.info("preprocessed %d distinct files (%d reused from cache %s)", len(todo), hits, cache)

    rows = manifest.dedupe(files, [m for m, _, _ in results], config.data.near_duplicate_bits)
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
    splits = split.make_splits(labels, groups, test_fraction=config.split.test_fraction,
                               val_fraction=config.split.val_fraction, k=config.split.k,
                               seed=config.seed)
    manifest.assign_splits(rows, used, splits)
    images = np.stack([results[i][1] for i in used])
    ds = Dataset(images=images, labels=labels, class_index=cls_idx,
                 names=[files[i].rel for i in used], sha256=[files[i].sha256 for i in used],
                 classes=classes, positive=config.data.positive if len(classes) == 2 else "",
                 negative_classes=tuple(config.data.negative_classes), splits=splits,
                 synthetic=synthetic, root=root, records=rows, cache_hits=hits,
                 hidden=discover.hidden_entries(root, classes), groups=groups)
    manifest.write(workdir, ds, params)
    return ds
