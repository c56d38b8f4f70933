"""Predict: model loading and its errors, input reading (images, DICOM, bad files), one
compilation per folder, thresholds, and the `predict` pipeline."""

import json
from pathlib import Path

import cv2
import jax
import numpy as np
import pytest
from helpers import MODEL_SIZE as SIZE
from helpers import head_scan, make_model_dir, write_dicom

from bt_jax import inference, model_card
from bt_jax.data import scans


def test_load_model_matches_direct_apply(model):
    x = np.random.default_rng(0).random((5, SIZE, SIZE, 3)).astype(np.float32)
    logits, _ = model.module.apply(model.variables, x, train=False)
    want = np.asarray(jax.nn.sigmoid(logits[:, 0]))
    got = inference.predict_array(model, x, batch_size=64)  # one batch, padded
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert model.threshold == 0.5 and model.model_id.startswith("efficientnet_lite0-")
    with pytest.raises(ValueError, match=r"expected \(N, 32, 32, 3\)"):
        inference.predict_array(model, x[:, :16])


def test_folder_of_1000_images_compiles_once(model, tmp_path):
    rng = np.random.default_rng(1)
    folder = tmp_path / "scans"
    folder.mkdir()
    for i in range(1000):   # mixed sizes: preprocessing, not the compiled shape, absorbs them
        cv2.imwrite(str(folder / f"s{i:04d}.png"), head_scan(rng, 48 + 16 * (i % 3)))
    files = inference.find_inputs(folder)
    assert len(files) == 1000
    inference.predict_array(model, np.zeros((1, SIZE, SIZE, 3), np.float32), batch_size=64)
    before = model.predict_fn._cache_size()
    rows = inference.predict_files(model, files, batch_size=64)
    assert model.predict_fn._cache_size() == before    # batch 64 was compiled once, above
    assert len(rows) == 1000 and all(r["status"] == "ok" for r in rows)
    p = np.array([r["p_tumour"] for r in rows])
    assert ((p >= 0) & (p <= 1)).all()
    # chunks are loaded ahead of the model: rows still follow the files, each its own
    assert [r["file"] for r in rows] == [str(f) for f in files]
    alone = inference.predict_files(model, files[255:258], batch_size=64, progress=False)
    np.testing.assert_allclose([r["p_tumour"] for r in alone], p[255:258], atol=1e-6)


def test_dicom_rescale_window_and_inversion(tmp_path):
    arr = (np.arange(64 * 64).reshape(64, 64) % 1000).astype(np.uint16)
    x = arr * 2.0 - 100.0
    p = write_dicom(tmp_path / "a.dcm", arr, slope=2.0, intercept=-100.0, window=(500, 400))
    img, info = scans.read_scan(p)
    want = np.clip((x - 499.5) / 399.0 + 0.5, 0, 1)
    np.testing.assert_allclose(img[:, :, 0], want, atol=1e-6)
    assert info["window"] == [500.0, 400.0] and img.shape == (64, 64, 3)
    p1 = write_dicom(tmp_path / "b", arr, photometric="MONOCHROME1", slope=2.0, intercept=-100.0,
                     window=(500, 400))   # no extension: recognised by the DICM magic
    img1, _ = scans.read_scan(p1)
    np.testing.assert_allclose(img1[:, :, 0], 1 - want, atol=1e-6)
    p2 = write_dicom(tmp_path / "c.dcm", arr)   # no window: the image's own range
    img2, _ = scans.read_scan(p2)
    np.testing.assert_allclose(img2[:, :, 0], arr / 999.0, atol=1e-6)


def test_bad_inputs_are_reported_and_the_rest_predicted(model, tmp_path):
    rng = np.random.default_rng(2)
    d = tmp_path / "in"
    d.mkdir()
    cv2.imwrite(str(d / "good.png"), head_scan(rng))
    write_dicom(d / "good.dcm", head_scan(rng).astype(np.uint16) * 8, window=(1000, 2000))
    (d / "empty.jpg").write_bytes(b"")
    (d / "notes.txt").write_text("hello")
    data = cv2.imencode(".png", head_scan(rng))[1].tobytes()
    (d / "truncated.png").write_bytes(data[: len(data) // 2])
    write_dicom(d / "nopixels.dcm", np.zeros((8, 8)), pixels=False)
    write_dicom(d / "multi.dcm", np.zeros((3, 32, 32)), frames=3)
    photo = np.zeros((64, 64, 3), np.uint8)
    photo[:, :32] = (0, 0, 255)
    photo[:, 32:] = (40, 200, 40)
    cv2.imwrite(str(d / "photo.jpg"), photo)
    rows = {Path(r["file"]).name: r for r in inference.predict_files(model, inference.find_inputs(d))}
    assert rows["good.png"]["status"] == rows["good.dcm"]["status"] == "ok"
    assert rows["good.dcm"]["p_tumour"] != ""
    assert "zero-byte" in rows["empty.jpg"]["note"]
    assert "not an image" in rows["notes.txt"]["note"]
    assert "truncated PNG" in rows["truncated.png"]["note"]
    assert "without pixel data" in rows["nopixels.dcm"]["note"]
    assert "multi-frame DICOM (3 frames)" in rows["multi.dcm"]["note"]
    for k in ("empty.jpg", "notes.txt", "truncated.png", "nopixels.dcm", "multi.dcm"):
        assert rows[k]["status"] == "error" and rows[k]["p_tumour"] == ""
    assert rows["photo.jpg"]["status"] == "flagged" and "colour image" in rows["photo.jpg"]["note"]
    assert rows["photo.jpg"]["p_tumour"] != ""
    skip = inference.predict_files(model, [d / "photo.jpg"], colour_policy="skip")[0]
    assert skip["status"] == "skipped" and skip["p_tumour"] == ""
    frame = inference.predict_files(model, [d / "multi.dcm"], dicom_frame=1)[0]
    assert frame["status"] == "error" and "blank" in frame["note"]   # frame read, then checked
    table = inference.format_table(list(rows.values()))
    assert "error: notes.txt" in table and "flagged: photo.jpg" in table


def test_model_card_errors(model_dir, tmp_path):
    card = json.loads((model_dir / "model.json").read_text())
    other = tmp_path / "v2"
    other.mkdir()
    (other / "model.json").write_text(json.dumps({**card, "format": 2}))
    with pytest.raises(inference.ModelCardError, match="model format 2, this bt_jax reads format 1"):
        inference.load_model(other)
    (other / "model.json").write_text(json.dumps({**card, "backbone": "resnet9000"}))
    with pytest.raises(inference.ModelCardError, match="backbone 'resnet9000' unknown"):
        inference.load_model(other / "model.json")
    # a card naming another backbone than its checkpoint holds
    import shutil
    shutil.copytree(model_dir / "checkpoints", other / "checkpoints")
    (other / "model.json").write_text(json.dumps({**card, "backbone": "mobilenet"}))
    with pytest.raises(inference.ModelCardError, match="does not fit backbone 'mobilenet'"):
        inference.load_model(other)
    with pytest.raises(inference.ModelCardError, match="no model.json"):
        inference.load_model(tmp_path / "nowhere")


def test_stored_temperature_scales_the_logits(model_dir, tmp_path, model):
    hot = make_model_dir(tmp_path / "hot", extra={"temperature": 4.0})
    m4 = inference.load_model(hot)
    x = np.random.default_rng(3).uniform(0, 1, (4, SIZE, SIZE, 3)).astype(np.float32)
    p1, p4 = inference.predict_array(model, x), inference.predict_array(m4, x)
    logit = np.log(p1) - np.log1p(-p1)
    np.testing.assert_allclose(p4, 1 / (1 + np.exp(-logit / 4.0)), rtol=1e-4, atol=1e-6)


def test_threshold_from_validation(model_dir, tmp_path):
    import shutil
    wd = tmp_path / "wd"
    shutil.copytree(model_dir, wd)
    labels = np.array([1] * 10 + [0] * 10)
    prob = np.r_[np.linspace(0.3, 0.95, 10), np.linspace(0.05, 0.6, 10)]
    op = model_card.record_validation(wd, [f"f{i}" for i in range(20)], labels, prob,
                                   target_sensitivity=0.9)
    assert op["sensitivity"] >= 0.9 and abs(op["threshold"] - prob[1]) < 1e-12
    m = inference.load_model(wd)
    assert m.threshold == op["threshold"] and m.threshold_info["specificity"] == op["specificity"]
    m2 = inference.load_model(wd, target_sensitivity=1.0)
    assert m2.threshold == pytest.approx(0.3) and m2.threshold_info["sensitivity"] == 1.0
    assert inference.load_model(wd, threshold=0.7).threshold == 0.7
    with pytest.raises(inference.ModelCardError, match="validation probabilities"):
        inference.load_model(model_dir, target_sensitivity=0.95)


def test_find_inputs(tmp_path):
    (tmp_path / "a").mkdir()
    for n in ("a/x.png", "a/y.dcm", "z.jpg", "a/.hidden.png"):
        (tmp_path / n).write_bytes(b"1")
    assert [p.name for p in inference.find_inputs(tmp_path / "a")] == ["x.png", "y.dcm"]
    assert [p.name for p in inference.find_inputs(str(tmp_path / "**" / "*.png"))] == ["x.png"]
    assert [p.name for p in inference.find_inputs(tmp_path / "z.jpg")] == ["z.jpg"]
    with pytest.raises(FileNotFoundError, match="not a file, a folder or a glob"):
        inference.find_inputs(tmp_path / "missing.png")


def test_predict_pipeline_writes_csv_and_gradcam(model_dir, tmp_path, capsys):
    import csv
    import sys
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from bt_jax import pipelines
    from configs import predict as predict_config
    rng = np.random.default_rng(3)
    d = tmp_path / "in"
    d.mkdir()
    for i in range(3):
        cv2.imwrite(str(d / f"s{i}.png"), head_scan(rng))
    (d / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    c = predict_config.get_config("quick")
    c.checkpoint, c.inputs, c.explain = str(model_dir), str(d), True
    out = tmp_path / "out"
    summary = pipelines.run(c, out)
    rows = list(csv.DictReader(open(out / "predictions.csv")))
    assert [r["status"] for r in rows] == ["error", "ok", "ok", "ok"]
    assert set(inference.CSV_FIELDS) <= set(rows[0])
    assert all(r["model_id"] == summary["model_id"] for r in rows)
    assert sorted(p.name for p in (out / "gradcam").glob("*.png")) == [
        "s0_png.png", "s1_png.png", "s2_png.png"]
    assert inference.overlay_name(d / "a" / "Y1.jpg", d) == "a__Y1_jpg.png"
    assert inference.overlay_name(d / "a" / "Y1.png", d) == "a__Y1_png.png"
    assert summary["status_counts"] == {"ok": 3, "flagged": 0, "skipped": 0, "error": 1}
    assert "error: broken.jpg" in capsys.readouterr().out
    html = (out / "report.html").read_text()
    assert "data:image/png;base64," in html and 'class="predictions"' in html


def test_evaluate_pipeline_maps_classes_and_flags_training_duplicates(model_dir, tmp_path):
    import csv
    import shutil
    import sys
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from bt_jax import pipelines
    from bt_jax.data import discover
    from configs import evaluate as evaluate_config
    rng = np.random.default_rng(5)
    ext = tmp_path / "other_site"
    for cls in ("glioma", "meningioma", "notumor"):
        (ext / cls).mkdir(parents=True)
        for i in range(4):
            cv2.imwrite(str(ext / cls / f"{cls}_{i}.png"), head_scan(rng))
    # a file the model's run trained on, disguised in the external set
    train = tmp_path / "train_copy.png"
    cv2.imwrite(str(train), head_scan(rng))
    shutil.copy(train, ext / "glioma" / "seen_before.png")
    wd = tmp_path / "model_run"
    shutil.copytree(model_dir, wd)
    sha = discover._hash(train)
    # another training image, re-encoded as a smaller JPEG: a near-copy, not byte-identical
    from bt_jax.data import decode
    train2 = tmp_path / "train2.png"
    cv2.imwrite(str(train2), head_scan(rng, 128))
    cv2.imwrite(str(ext / "glioma" / "reencoded.jpg"), cv2.resize(cv2.imread(str(train2)), (96, 96)),
                [cv2.IMWRITE_JPEG_QUALITY, 80])
    ph = str(decode.perceptual_hash(decode.decode_file(train2)[0]))
    (wd / "manifest.json").write_text(json.dumps({"files": [
        {"file": "yes/train_copy.png", "sha256": sha, "split": "fold1", "status": "used",
         "phash": ""},
        {"file": "yes/train2.png", "sha256": "x", "split": "test", "status": "used", "phash": ph}]}))
    # notebook checkpoint copies are not scans; nested sub-folders of a class are
    (ext / "glioma" / ".ipynb_checkpoints").mkdir()
    cv2.imwrite(str(ext / "glioma" / ".ipynb_checkpoints" / "glioma_0-checkpoint.png"),
                head_scan(rng))
    (ext / "notumor" / "site2").mkdir()
    cv2.imwrite(str(ext / "notumor" / "site2" / "nested.png"), head_scan(rng))
    c = evaluate_config.get_config("quick")
    c.checkpoint, c.inputs = str(wd), str(ext)
    c.external.positive_classes = ("glioma", "meningioma")
    c.external.negative_classes = ("notumor",)
    out = tmp_path / "eval"
    m = pipelines.run(c, out)
    assert m["class_mapping"] == {"glioma": 1, "meningioma": 1, "notumor": 0}
    assert m["n_files"] == 15 and m["n_predicted"] == 15 and m["n_training_duplicates"] == 1
    assert m["n_training_near_duplicates"] == 1
    assert m["results"]["all"]["n"] == 15 and m["results"]["without_training_duplicates"]["n"] == 13
    rows = {r["file"]: r for r in csv.DictReader(open(out / "predictions.csv"))}
    assert rows["glioma/seen_before.png"]["training_duplicate_of"] == "yes/train_copy.png"
    assert rows["glioma/reencoded.jpg"]["training_near_duplicate_of"] == "yes/train2.png"
    assert rows["glioma/reencoded.jpg"]["training_split"] == "test"
    assert "notumor/site2/nested.png" in rows and not any(".ipynb" in f for f in rows)
    assert "near-copies of training images" in (out / "report.md").read_text()
    assert rows["notumor/notumor_0.png"]["label"] == "0"
    assert (out / "eval" / "external" / "roc.png").exists() and (out / "report.html").exists()
    # an unmapped sub-folder is an error naming it, before any prediction
    (ext / "pituitary").mkdir()
    with pytest.raises(discover.DataLayoutError, match="pituitary"):
        pipelines.run(c, tmp_path / "eval2")
