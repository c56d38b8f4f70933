"""serve's page (GET /): drop scans, see each one's answer, Grad-CAM and the model card.

    PAGE            # one self-contained HTML document: no file or script from elsewhere

The script reads api/model once, then posts each dropped or chosen file to api/predict (two
at a time) and shows per file: the predicted class, the decision at the model's threshold,
every class probability, warnings (a copy of a training image, a flagged scan) and the
Grad-CAM overlay; a refused file shows the API's error. Relative URLs: the page works
behind a path prefix too. Text from the server is set with textContent, never as HTML.
"""

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>bt_jax: brain MRI classifier</title>
<style>
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;max-width:1100px;margin:1.5em auto;
padding:0 1em;color:#222;line-height:1.4}
h1{font-size:1.4em;border-bottom:2px solid #444;padding-bottom:.2em}
.banner{background:#fff3cd;border-left:4px solid #d9a400;padding:.4em .8em;margin:.6em 0}
.banner.synthetic{background:#f8d7da;border-color:#c0392b}
table{border-collapse:collapse;font-size:.9em}td,th{border:1px solid #ccc;padding:.25em .6em;
text-align:left;vertical-align:top}th{background:#f0f0f0;white-space:nowrap}
#drop{display:block;border:2px dashed #888;border-radius:8px;padding:2em;text-align:center;
margin:1em 0;cursor:pointer;background:#fafafa}#drop.over{background:#e8f4ff;border-color:#2a7ae2}
#files{margin-top:.6em}
.result{border:1px solid #ccc;border-radius:6px;padding:.6em 1em;margin:.8em 0;display:flex;
gap:1.2em;flex-wrap:wrap}.result .text{flex:1 1 380px}.result h3{margin:.1em 0 .4em;
font-size:1em;word-break:break-all}.result.error{background:#fdecea}
.predicted-class{font-size:1.5em;font-weight:600}.decision{margin:.3em 0}
.bar{display:inline-block;height:.8em;background:#2a7ae2;vertical-align:middle}
.warning{background:#fff3cd;padding:.3em .6em;margin:.4em 0;border-radius:4px}
.error-text{color:#a00}.overlay{max-width:400px;width:100%;height:auto}
.muted{color:#666;font-size:.85em}
</style></head>
<body>
<h1>bt_jax: <span id="model-id">loading the model card...</span></h1>
<div class="banner">A research tool, not a medical device: its answers must not be used
to diagnose or treat anyone. This page has no login; anyone who can open it can use it.</div>
<div id="synthetic"></div>
<h2>Model card</h2>
<table id="card"><tbody></tbody></table>
<h2>Scans</h2>
<label id="drop" for="files">Drop scans here (JPEG, PNG, BMP, TIFF, DICOM, NIfTI) or click to
choose; several at once are fine.<br>
<input type="file" id="files" name="file" multiple></label>
<div id="results"></div>
<script>
"use strict";
function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}
function num(x) { return (typeof x === "number") ? x.toFixed(3) : "-"; }
function est(e) {
  if (!e) return "-";
  return num(e.value) + (e.ci ? " [" + num(e.ci[0]) + ", " + num(e.ci[1]) + "]" : "");
}
function row(tbody, name, value) {
  const tr = el("tr"); tr.append(el("th", "", name), el("td", "", value)); tbody.append(tr);
}
let card = null;
async function loadCard() {
  const r = await fetch("api/model");
  card = await r.json();
  document.getElementById("model-id").textContent = card.model_id;
  const t = document.querySelector("#card tbody");
  row(t, "backbone", card.backbone);
  row(t, "classes", card.classes.join(", ") + (card.positive ? " (tumour: " + card.positive + ")"
      : card.negative_classes.length ? " (no tumour: " + card.negative_classes.join(", ") + ")"
      : ""));
  row(t, "training data", (card.n_training_scans === null ? "unknown" :
      card.n_training_scans + " scans for training and validation, " + card.n_test_scans +
      " held out for testing") + (card.synthetic_training_data ? "; SYNTHETIC phantoms" : ""));
  row(t, "cross-validation estimate", card.cv ? "accuracy " + est(card.cv.accuracy) +
      ", ROC AUC " + est(card.cv.roc_auc) + " (" + card.cv.repeats + " x " + card.cv.k +
      "-fold, " + card.cv.n_images + " images, 95% CI)" : "none stored with this model");
  row(t, "test split", card.test ? "accuracy " + est(card.test.accuracy) + " on " +
      card.test.n + " images" : "-");
  row(t, "threshold", num(card.threshold) + " (" + (card.threshold_info.source || "") + ")" +
      (card.has_binary_view ? "" : "; unused: no tumour vs no-tumour view"));
  row(t, "calibration", "temperature " + num(card.temperature) + " (" +
      (card.temperature_info.source || "") + ")" + (card.test && card.test.ece ?
      "; test ECE " + est(card.test.ece) + ", Brier " + est(card.test.brier) : ""));
  row(t, "Grad-CAM", "evidence for the " + (card.gradcam_class === "predicted" ?
      "predicted class" : "class " + card.gradcam_class));
  if (card.synthetic_training_data) {
    document.getElementById("synthetic").append(el("div", "banner synthetic",
      "This model was trained on synthetic phantoms, not on MRI scans: its answers " +
      "on real scans mean nothing."));
  }
}
function render(box, j) {
  const text = box.querySelector(".text");
  text.querySelector(".status").remove();
  const head = el("div", "decision");
  head.append(el("span", "predicted-class", j.predicted_class));
  if (j.decision !== undefined) {
    const tumour = card && card.positive ? card.positive : "tumour";
    head.append(el("div", "", "P(" + tumour + ") = " + num(j.p_tumour) + " -> " + j.decision +
                   " at the model's threshold " + num(j.threshold)));
  }
  text.append(head);
  const t = el("table", "probabilities"), tb = el("tbody");
  for (const [c, p] of Object.entries(j.probabilities)) {
    const tr = el("tr"), bar = el("span", "bar"), td = el("td");
    bar.style.width = Math.round(200 * p) + "px";
    td.append(bar, document.createTextNode(" " + num(p)));
    tr.append(el("th", "", c), td); tb.append(tr);
  }
  t.append(tb); text.append(t);
  if (j.near_duplicate_warning) text.append(el("div", "warning near-duplicate",
      "Seen in training: " + j.near_duplicate_warning));
  if (j.note) text.append(el("div", "warning note", j.note));
  if (j.slices) {
    const d = el("details"); d.append(el("summary", "", j.slices.length +
      " slices; shown: " + j.file));
    for (const s of j.slices) d.append(el("div", "muted", s.file + ": " +
      (s.predicted_class || s.status) + (s.p_tumour !== undefined ? ", P(tumour) " +
      num(s.p_tumour) : "")));
    text.append(d);
  }
  const img = el("img", "overlay");
  img.alt = "Grad-CAM of " + j.file; img.src = j.overlay;
  box.append(img);
}
async function send(file) {
  const box = el("section", "result"), text = el("div", "text");
  text.append(el("h3", "file", file.name), el("div", "status muted", "predicting..."));
  box.append(text);
  document.getElementById("results").prepend(box);
  const form = new FormData();
  form.append("file", file, file.name);
  try {
    const r = await fetch("api/predict", {method: "POST", body: form});
    const j = await r.json();
    if (!r.ok) throw new Error(j.error || r.statusText);
    render(box, j);
  } catch (e) {
    box.classList.add("error");
    text.querySelector(".status").replaceWith(el("div", "error-text", String(e.message || e)));
  }
}
async function sendAll(files) {
  const queue = Array.from(files);
  const worker = async () => { while (queue.length) await send(queue.shift()); };
  await Promise.all([worker(), worker()]);
}
const drop = document.getElementById("drop"), input = document.getElementById("files");
input.addEventListener("change", () => {
  const files = Array.from(input.files);
  input.value = "";  // choosing the same file again is a change too
  sendAll(files);
});
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => {
  e.preventDefault(); drop.classList.remove("over"); sendAll(e.dataTransfer.files);
});
loadCard().catch((e) => {
  document.getElementById("model-id").textContent = "model card unavailable: " + e;
});
</script>
</body></html>
"""
