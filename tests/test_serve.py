"""Serve: the web app on a real server at 127.0.0.1 (a free port) over HTTP and in headless
Chromium, and (e2e) docs/serving.md's command as typed on a trained model, stopped by Ctrl-C."""

import hashlib
import json
import queue
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
from helpers import head_scan, tiny_model_dir, write_dicom

from bt_jax import errors, inference
from bt_jax.config import ConfigError
from bt_jax.data import decode
from bt_jax.pipelines import serve
from bt_jax.serving import webapp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from configs import serve as serve_config  # noqa: E402

CHROMIUM = Path("/usr/bin/chromium")
LIMIT_MB = 0.1


def post(url: str, name: str | None, data: bytes, field: str = "file") -> tuple[int, dict]:
    """POST url with one multipart field (a file upload unless name is None)."""
    b = uuid.uuid4().hex
    head = f'--{b}\r\nContent-Disposition: form-data; name="{field}"'
    head += f'; filename="{name}"\r\nContent-Type: application/octet-stream' if name else ""
    body = f"{head}\r\n\r\n".encode() + data + f"\r\n--{b}--\r\n".encode()
    req = urllib.request.Request(url + "api/predict", data=body,
                                 headers={"Content-Type": f"multipart/form-data; boundary={b}"})
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=60) as r:
        return json.loads(r.read())


def png(img: np.ndarray) -> bytes:
    return cv2.imencode(".png", img)[1].tobytes()


def training_hashes(model_dir: Path, scans: dict) -> None:
    """training_hashes.json as a training run leaves it, for the given {name: PNG bytes}."""
    rows = []
    for name, data in scans.items():
        img = decode.decode_bytes(data)[0]
        rows.append({"file": name, "sha256": hashlib.sha256(data).hexdigest(),
                     "phash": str(decode.perceptual_hash(img)), "status": "used",
                     "split": "fold1", "thumb": decode.thumb_to_text(decode.thumbnail(img))})
    (model_dir / "training_hashes.json").write_text(json.dumps(rows))


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    """The serve pipeline's server, running in a thread on a free port of 127.0.0.1."""
    d = tiny_model_dir(tmp_path_factory.mktemp("model"))
    rng = np.random.default_rng(11)
    seen = {"yes/Y1.png": png(head_scan(rng, 96)), "no/N1.png": png(head_scan(rng, 128))}
    training_hashes(d, seen)
    c = serve_config.get_config()
    c.checkpoint, c.port, c.serve.max_upload_mb = str(d), 0, LIMIT_MB
    server, url, svc = serve.make_server(c)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    yield SimpleNamespace(url=url, svc=svc, dir=d, seen=seen, compiled=svc.compiled())
    server.task_dispatcher.shutdown()
    server.close()
    thread.join(timeout=10)


def test_predict_api_answers_like_predict_and_flags_training_copies(live, tmp_path):
    scan = png(head_scan(np.random.default_rng(3), 80))
    status, j = post(live.url, "a scan.png", scan)
    assert status == 200, j
    assert j["file"] == "a scan.png" and j["status"] == "ok"
    assert j["model_id"] == live.svc.model.model_id
    assert list(j["probabilities"]) == ["no", "yes"]
    assert sum(j["probabilities"].values()) == pytest.approx(1, abs=1e-5)
    (tmp_path / "a.png").write_bytes(scan)
    [row] = inference.predict_files(live.svc.model, [tmp_path / "a.png"], batch_size=1,
                                    progress=False)   # serve's batch: its compiled program
    assert j["p_tumour"] == row["p_tumour"] and j["decision"] == row["decision"]
    assert j["predicted_class"] == j["decision"] and j["threshold"] == 0.5
    assert j["overlay"].startswith("data:image/png;base64,") and not j["near_duplicate_warning"]
    # a byte-identical copy of a training image, and a re-encoded, resized one
    status, j = post(live.url, "again.png", live.seen["yes/Y1.png"])
    assert status == 200 and j["training_duplicate_of"] == "yes/Y1.png", j
    assert "byte-identical to yes/Y1.png (fold1)" in j["near_duplicate_warning"]
    img = cv2.imdecode(np.frombuffer(live.seen["no/N1.png"], np.uint8), cv2.IMREAD_GRAYSCALE)
    jpeg = cv2.imencode(".jpg", cv2.resize(img, (96, 96)), [cv2.IMWRITE_JPEG_QUALITY, 80])[1]
    status, j = post(live.url, "reencoded.jpg", jpeg.tobytes())
    assert status == 200 and j["training_near_duplicate_of"] == "no/N1.png", j
    assert not j["training_duplicate_of"]
    assert "near-copy of no/N1.png" in j["near_duplicate_warning"]


def test_refused_uploads_get_400_json(live):
    too_big = int(LIMIT_MB * 2**20)
    cases = {"notes.txt": (b"not an image at all", "not an image"),
             "empty.png": (b"", "empty upload"),
             "big.png": (b"\x89PNG" + bytes(too_big), "larger than serve.max_upload_mb"),
             "huge.png": (b"\x89PNG" + bytes(3 * too_big), "larger than serve.max_upload_mb"),
             "truncated.png": (png(head_scan(np.random.default_rng(0)))[:200], "truncated PNG")}
    for name, (data, message) in cases.items():
        status, j = post(live.url, name, data)
        assert status == 400 and message in j["error"], (name, j)
    status, j = post(live.url, None, b"x", field="other")
    assert status == 400 and "field 'file'" in j["error"]


def test_dicom_and_nifti_uploads(live, tmp_path):
    import nibabel as nib
    arr = (head_scan(np.random.default_rng(4), 64).astype(np.uint16) * 16)
    dcm = write_dicom(tmp_path / "s.dcm", arr)
    status, j = post(live.url, "s.dcm", dcm.read_bytes())
    assert status == 200 and j["predicted_class"] in ("no", "yes"), j
    vol = np.zeros((64, 64, 6), np.float32)
    for z in range(1, 5):
        vol[:, :, z] = head_scan(np.random.default_rng(z), 64).T / 255.0
    nib.save(nib.Nifti1Image(vol, np.eye(4)), tmp_path / "v.nii.gz")
    status, j = post(live.url, "v.nii.gz", (tmp_path / "v.nii.gz").read_bytes())
    assert status == 200, j
    slices = j["slices"]
    assert len(slices) >= 2 and all(s["file"].startswith("v.nii.gz#z=") for s in slices)
    assert j["p_tumour"] == max(s["p_tumour"] for s in slices)   # the slice shown
    assert j["file"] in [s["file"] for s in slices] and j["overlay"]


def test_concurrent_requests_share_the_loaded_compiled_model(live, monkeypatch):
    """Three requests must be inside the handler at once (a barrier) or all fail; none
    loads the model again or compiles anything."""
    def no_reload(*a, **k):
        raise AssertionError("a request loaded the model again")
    monkeypatch.setattr(inference, "load_model", no_reload)
    monkeypatch.setattr(inference.loading, "load_model", no_reload)   # load_for's
    barrier, original = threading.Barrier(3, timeout=60), live.svc.predict_upload

    def together(name, data):
        barrier.wait()
        return original(name, data)
    monkeypatch.setattr(live.svc, "predict_upload", together)
    scan = png(head_scan(np.random.default_rng(9), 72))
    answers = queue.Queue()
    threads = [threading.Thread(target=lambda: answers.put(post(live.url, "c.png", scan)))
               for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    got = [answers.get_nowait() for _ in range(3)]
    assert [s for s, _ in got] == [200] * 3, got
    assert len({json.dumps(j["probabilities"]) for _, j in got}) == 1
    assert live.svc.compiled() == live.compiled == (1, 1)


def test_page_model_card_and_settings(live):
    page = urllib.request.urlopen(live.url, timeout=60).read().decode()
    assert 'type="file"' in page and "api/predict" in page and "http" not in page.split(
        "<script>")[1]   # nothing fetched from elsewhere
    card = get_json(live.url + "api/model")
    assert card["backbone"] == "efficientnet_lite0" and card["classes"] == ["no", "yes"]
    assert card["n_training_scans"] == 2 and card["n_test_scans"] == 0
    assert card["synthetic_training_data"] and card["threshold"] == 0.5
    assert webapp.safe_name("../../etc/x y.nii.gz") == "x_y.nii.gz"
    assert webapp.safe_name(".hidden") == "hidden" and webapp.safe_name("") == "upload"
    assert errors.one_line(errors.Stopped("stopped serving http://127.0.0.1:1/"), stage="s",
                           workdir="W") == ("stopped serving http://127.0.0.1:1/", "", 130)


def test_a_non_local_host_warns_and_a_busy_port_is_one_line(live, caplog):
    c = serve_config.get_config()
    c.checkpoint, c.port, c.serve.host = str(live.dir), 0, "127.0.0.2"   # still loopback
    server, url, _ = serve.make_server(c, service=live.svc)
    server.close()
    assert url.startswith("http://127.0.0.2:")
    assert "no authentication" in caplog.text
    c.serve.host, c.port = "127.0.0.1", int(live.url.rsplit(":", 1)[1].strip("/"))
    with pytest.raises(ConfigError, match=r"cannot listen on 127\.0\.0\.1 port \d+ \(Address "
                                          r"already in use\)"):
        serve.make_server(c)   # fails before loading the model


# ----------------------------------------------------------------------- the browser

class DevTools:
    """The Chrome DevTools protocol over one websocket: call(method, **params) -> result."""

    def __init__(self, ws_url: str):
        import websocket
        self.ws = websocket.create_connection(ws_url, timeout=60, suppress_origin=True)
        self.n = 0

    def call(self, method: str, **params):
        self.n += 1
        self.ws.send(json.dumps({"id": self.n, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == self.n:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg["result"]

    def js(self, expression: str):
        return self.call("Runtime.evaluate", expression=expression,
                         returnByValue=True)["result"].get("value")

    def until(self, expression: str, timeout: float = 120):
        end = time.time() + timeout
        while time.time() < end:
            value = self.js(expression)
            if value:
                return value
            time.sleep(0.2)
        raise AssertionError(f"timed out waiting for {expression}")


@pytest.fixture
def browser(tmp_path):
    if not CHROMIUM.exists():
        pytest.skip(f"headless Chromium not found at {CHROMIUM} (CI installs it: apt-get "
                    "install chromium)")
    pytest.importorskip("websocket", reason="websocket-client (a dev dependency) is missing")
    profile = tmp_path / "profile"
    proc = subprocess.Popen([str(CHROMIUM), "--headless=new", "--no-sandbox", "--disable-gpu",
                             "--no-first-run", "--remote-debugging-port=0",
                             f"--user-data-dir={profile}", "about:blank"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        active = profile / "DevToolsActivePort"
        end = time.time() + 60
        while not active.exists() or not active.read_text().strip():
            assert time.time() < end and proc.poll() is None, "Chromium did not start"
            time.sleep(0.1)
        port = active.read_text().split()[0]
        targets = get_json(f"http://127.0.0.1:{port}/json/list")
        yield DevTools(next(t for t in targets if t["type"] == "page")["webSocketDebuggerUrl"])
    finally:
        proc.terminate()
        proc.wait(timeout=30)


RESULTS_JS = """[...document.querySelectorAll('.result')].map(r => ({
  file: r.querySelector('.file').textContent,
  cls: r.querySelector('.predicted-class') ? r.querySelector('.predicted-class').textContent : null,
  error: r.querySelector('.error-text') ? r.querySelector('.error-text').textContent : null,
  overlay: r.querySelector('img.overlay') ? r.querySelector('img.overlay').naturalWidth : 0}))"""


def test_the_page_in_headless_chromium(live, browser, tmp_path):
    scan, bad = tmp_path / "scan1.png", tmp_path / "notes.txt"
    scan.write_bytes(png(head_scan(np.random.default_rng(21), 88)))
    bad.write_text("not a scan")
    browser.call("Page.navigate", url=live.url)
    browser.until(f"document.getElementById('model-id').textContent === "
                  f"{json.dumps(live.svc.model.model_id)}")
    assert "efficientnet_lite0" in browser.js("document.getElementById('card').textContent")
    root = browser.call("DOM.getDocument")["root"]["nodeId"]
    node = browser.call("DOM.querySelector", nodeId=root, selector="#files")["nodeId"]
    browser.call("DOM.setFileInputFiles", nodeId=node, files=[str(scan), str(bad)])
    browser.until(f"(() => {{ const r = {RESULTS_JS}; return r.length === 2 && "
                  "r.every(x => x.error || (x.cls && x.overlay > 0)); })()")
    shown = {r["file"]: r for r in browser.js(RESULTS_JS)}
    _, want = post(live.url, "scan1.png", scan.read_bytes())
    assert shown["scan1.png"]["cls"] == want["predicted_class"]
    assert shown["scan1.png"]["overlay"] > 100          # the Grad-CAM PNG was decoded
    assert "not an image" in shown["notes.txt"]["error"]


# ------------------------------------------------------- the docs' command, as typed

def serve_command() -> str:
    text = (ROOT / "docs" / "serving.md").read_text()
    m = re.search(r"<!-- serve-command -->\n```sh\n(.*?)\n```", text, flags=re.S)
    assert m, "docs/serving.md: the serve command block is missing"
    return m.group(1).strip()


def start_serve(args: list[str], cwd: Path):
    """launch.py serve in a subprocess: (process, its URL, its stderr lines so far)."""
    proc = subprocess.Popen([sys.executable, *args], cwd=cwd, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = queue.Queue(), []
    threading.Thread(target=lambda: [out.put(x) for x in proc.stdout], daemon=True).start()
    threading.Thread(target=lambda: [err.append(x) for x in proc.stderr], daemon=True).start()
    end = time.time() + 300
    while time.time() < end and proc.poll() is None:
        try:
            m = re.match(r"serving \S+ at (\S+) \(Ctrl-C stops\)", out.get(timeout=1))
        except queue.Empty:
            continue
        if m:
            return proc, m.group(1), err
    proc.kill()
    raise AssertionError("serve did not start:\n" + "".join(err)[-3000:])


@pytest.mark.e2e
def test_docs_serve_command_as_typed_then_ctrl_c(quick_search_run, tmp_path):
    """The command of docs/serving.md on a trained model (runs/quickstart: the quick method
    A run; port 8000 -> a free one), then the docs' curl calls, then Ctrl-C."""
    trained, _ = quick_search_run
    cmd = serve_command().replace("--config.port=8000", "--config.port=0")
    args = [t.replace("configs/", f"{ROOT}/configs/").replace("runs/quickstart", str(trained))
            for t in shlex.split(cmd)]
    assert args[:2] == ["python", "launch.py"]
    proc, url, err = start_serve([str(ROOT / "launch.py"), *args[2:]], tmp_path)
    (tmp_path / "scans").mkdir()
    cv2.imwrite(str(tmp_path / "scans" / "scan0.png"), head_scan(np.random.default_rng(0), 96))
    if shutil.which("curl"):
        for line in re.findall(r"^curl .*$", (ROOT / "docs" / "serving.md").read_text(), re.M):
            r = subprocess.run(shlex.split(line.replace("http://127.0.0.1:8000/", url)),
                               cwd=tmp_path, capture_output=True, text=True, timeout=120)
            assert r.returncode == 0 and "error" not in json.loads(r.stdout), (line, r.stdout)
    status, j = post(url, "scan0.png", (tmp_path / "scans" / "scan0.png").read_bytes())
    assert status == 200 and set(j["probabilities"]) == {"no", "yes"}
    card = get_json(url + "api/model")
    assert card["cv"]["accuracy"]["ci"] and card["n_training_scans"] > 0
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=60) == 130
    time.sleep(0.5)   # the reader thread takes the last lines
    text = "".join(err)
    assert "Traceback" not in text and "hint:" not in text, text[-3000:]
    assert text.strip().splitlines()[-1] == f"stopped serving {url}"
