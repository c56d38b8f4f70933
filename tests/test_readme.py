"""Every `python launch.py` command in README.md and docs/*.md runs as typed (at quick
sizes), in order: README first, then the docs files by name.

Only these changes are made to a command: a config file gets its `:quick` variant, the
example inputs (scans/, /data/other_site) point into a temporary folder, which is also the
working directory (so relative workdirs like runs/quickstart stay relative, as typed), and
../shared/data/brain_mri points at the reference set, ../shared/data/brain_mri_types at a
sample of it (12 scans per class) and phantom counts above 1,000 per class become 16.
Everything else, e.g.
`--config.external.positive_classes=glioma,meningioma,pituitary`, is passed as written.
"""

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

pytestmark = pytest.mark.e2e  # whole pipelines: `pytest -m e2e`

ROOT = Path(__file__).resolve().parents[1]
QUICK = ("quickstart", "predict", "evaluate", "vgg19_staged", "multiclass_search", "real_search",
         "types_search")


TYPES = ROOT.parent / "shared" / "data" / "brain_mri_types"


def readme_commands() -> list[str]:
    return commands_in((ROOT / "README.md").read_text())


def docs_commands() -> list[str]:
    return [c for doc in sorted((ROOT / "docs").glob("*.md")) for c in commands_in(doc.read_text())]


def commands_in(text: str) -> list[str]:
    text = re.sub(r"<!-- ci:install-test -->.*?<!-- /ci:install-test -->", "", text, flags=re.S)
    cmds = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for cmd in block.replace("\\\n", " ").splitlines():
            cmd = cmd.split(" #")[0].strip()
            if cmd.startswith("python launch.py"):
                cmds.append(cmd)
    return cmds


def _example_inputs(tmp: Path) -> None:
    rng = np.random.default_rng(0)

    def scan(path):
        img = np.zeros((96, 96), np.uint8)
        cv2.ellipse(img, (48, 48), (30, 40), 0, 0, 360, int(rng.integers(120, 220)), -1)
        path.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(path), cv2.add(img, rng.integers(0, 30, img.shape, dtype=np.uint8)))
    for i in range(3):
        scan(tmp / "scans" / f"scan{i}.png")
    for cls in ("glioma", "meningioma", "pituitary", "notumor"):
        for i in range(3):
            scan(tmp / "other_site" / cls / f"{cls}{i}.jpg")
        # the four-class folder at a test's size: real scans when present
        real = sorted((TYPES / cls).glob("*.jpg"))[:12] if (TYPES / cls).is_dir() else []
        for i in range(12):
            dst = tmp / "types_sample" / cls / f"{cls}{i}.jpg"
            if real:
                dst.parent.mkdir(parents=True, exist_ok=True)
                dst.write_bytes(real[i].read_bytes())
            else:
                scan(dst)


def localise(cmd: str, tmp: Path, data_dir: Path) -> list[str]:
    out = []
    for tok in shlex.split(cmd):
        m = re.fullmatch(r"--config=configs/(\w+)\.py(?::(\S+))?", tok)
        if m and m.group(1) in QUICK:  # configs/x.py:finetune -> configs/x.py:finetune,quick
            arg = ",".join(filter(None, (m.group(2), "quick")))
            tok = f"--config={ROOT}/configs/{m.group(1)}.py:{arg}"
        elif tok.startswith("--config="):
            tok = tok.replace("configs/", f"{ROOT}/configs/")
        tok = tok.replace("=scans/", f"={tmp}/scans/").replace("=/data/other_site",
                                                               f"={tmp}/other_site")
        tok = tok.replace("../shared/data/brain_mri_types", str(tmp / "types_sample"))
        tok = tok.replace("../shared/data/brain_mri", str(data_dir))
        m = re.fullmatch(r"--config\.data\.phantoms\.n_per_class=(\d+)", tok)
        if m and int(m.group(1)) > 1000:
            tok = "--config.data.phantoms.n_per_class=16"
        out.append(tok)
    assert out[:2] == ["python", "launch.py"]
    return [sys.executable, str(ROOT / "launch.py"), *out[2:]]


def _gist(stderr: str) -> str:
    """A failed command's stderr without the interpreter's list of extension modules (what a
    fatal error prints last), its first fatal lines kept beside the tail."""
    lines = [ln for ln in stderr.splitlines() if not ln.startswith("Extension modules:")]
    fatal = [ln for ln in lines if ln[:1] in "FE" and "]" in ln[:40] or "Fatal" in ln][:5]
    return "\n".join(fatal + ["..."] + lines[-40:])[-4000:]


def test_readme_has_the_main_commands():
    cmds = readme_commands()
    assert "python launch.py --config=configs/quickstart.py --workdir=runs/quickstart" in cmds
    assert any("--config.external.positive_classes=glioma,meningioma,pituitary" in c for c in cmds)
    assert any("configs/predict.py" in c for c in cmds) and len(cmds) >= 5


def test_every_readme_command_runs_as_typed(tmp_path, real_data_dir):
    """A command ending in `&` runs in the background, as in a shell, until the next one
    has finished (the two processes of the multi-host example)."""
    _example_inputs(tmp_path)
    background = []
    for cmd in readme_commands() + docs_commands():
        args = localise(cmd.rstrip("&").strip(), tmp_path, real_data_dir)
        if cmd.endswith("&"):  # its log goes to a file: an unread pipe fills and stalls it
            log = tmp_path / f"background_{len(background)}.err"
            with open(log, "w") as f:
                background.append((cmd, log, subprocess.Popen(
                    args, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=f)))
            continue
        r = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=900)
        if r.returncode != 0:
            for _, _, proc in background:  # the other process's story often explains this one
                proc.kill()
                proc.wait()
            others = "".join(f"\n--- {c}\n{_gist(log.read_text())}" for c, log, _ in background)
            raise AssertionError(f"README command failed: {cmd}\n{_gist(r.stderr)}{others}")
        for bg_cmd, log, proc in background:
            proc.wait(timeout=900)
            assert proc.returncode == 0, f"README command failed: {bg_cmd}\n{_gist(log.read_text())}"
        background = []
    assert not background
    assert (tmp_path / "runs" / "quickstart" / "model.json").exists()
    assert (tmp_path / "runs" / "two_hosts" / "model.json").exists()
    assert (tmp_path / "runs" / "pred" / "predictions.csv").exists()
    real = json.loads((tmp_path / "runs" / "real" / "model.json").read_text())  # native sizes
    assert real["preprocess"]["size"] == {"efficientnet_lite0": 224,
                                          "efficientnet_lite1": 240}[real["backbone"]]
    ext = (tmp_path / "runs" / "external" / "metrics.json").read_text()
    assert '"glioma": 1' in ext and '"pituitary": 1' in ext and '"notumor": 0' in ext
    # docs/results.md "Other sources": each model on the other set, as tumour vs no tumour
    on_ref = json.loads((tmp_path / "runs" / "types_on_reference" / "metrics.json").read_text())
    assert on_ref["evaluation"] == "binary view" and on_ref["negative_classes"] == ["notumor"]
    assert on_ref["n_predicted"] == on_ref["n_files"] == 253
    on_types = json.loads((tmp_path / "runs" / "reference_on_types" / "metrics.json").read_text())
    assert on_types["n_predicted"] == 4 * 12
    big = json.loads((tmp_path / "runs" / "big" / "metrics.json").read_text())
    assert big["frozen_vs_finetuned"]["frozen_only"] and len(big["final"]["class_names"]) == 4


@pytest.mark.parametrize("cmd", ["python launch.py --config=configs/quickstart.py "
                                 "--workdir=runs/a --config.data.dir=../shared/data/brain_mri"])
def test_localise_changes_only_sizes_and_paths(cmd, tmp_path):
    args = localise(cmd, tmp_path, Path("/ref"))
    assert args[2:] == [f"--config={ROOT}/configs/quickstart.py:quick",
                        "--workdir=runs/a", "--config.data.dir=/ref"]
