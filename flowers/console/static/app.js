"use strict";
// The console's three pages over /api/* (flowers/console/app.py). Plain DOM, no build step.
const $ = (selector) => document.querySelector(selector);
let state = null;      // /api/models
let stateLoading = null;  // the latest /api/models request: an upload waits for it, else it has no target yet
let evalData = null;   // /api/eval/<version>
let selectedCell = null;

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "text") node.textContent = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value);
  }
  node.append(...children);
  return node;
}

function showMessage(text) { $("#message").textContent = text; $("#message").hidden = false; }
function clearMessage() { $("#message").hidden = true; }
const pct = (x) => (x == null ? "–" : (100 * x).toFixed(1) + "%");
const num = (x) => (x == null ? "–" : x.toFixed(3));

async function getJSON(url, options) {
  const response = await fetch(url, options);
  let body;
  try { body = await response.json(); } catch { body = { error: `HTTP ${response.status}` }; }
  if (!response.ok) throw new Error(body.error || `HTTP ${response.status}`);
  return body;
}

async function loadState() {
  state = await getJSON("/api/models");
  $("#server").textContent = `model ${state.model} on ${state.server}`;
  if (state.server_error) showMessage(`Model server: ${state.server_error}`);
  const select = $("#target");
  const previous = select.value;
  select.replaceChildren(...state.targets.map((t) => el("option", { value: t.id, text: t.text })));
  select.value = state.targets.some((t) => t.id === previous) ? previous : (state.default || "");
  updateCanaryBox();
}

function updateCanaryBox() {
  $("#canary-box").hidden = !state.canary || $("#target").value === state.canary;
}

function targetText(id) {
  const t = state.targets.find((x) => x.id === id);
  return t ? t.text : id;
}

// --- Try it ----------------------------------------------------------------------------

async function upload(files) {
  await stateLoading?.catch(() => {});
  clearMessage();
  const results = $("#results");
  results.replaceChildren(el("p", { text: `Classifying ${files.length} photo(s)…` }));
  const targets = [$("#target").value];
  if (!$("#canary-box").hidden && $("#with-canary").checked) targets.push(state.canary);
  const answers = [];
  for (const target of targets) {
    const form = new FormData();
    for (const file of files) form.append("photos", file, file.name);
    try {
      answers.push(await getJSON(`/api/predict?target=${encodeURIComponent(target)}`, { method: "POST", body: form }));
    } catch (e) {
      results.replaceChildren();
      showMessage(`Upload failed: ${e.message}`);
      return;
    }
  }
  results.replaceChildren(...files.map((file, i) => resultCard(file, answers, i)));
}

function resultCard(file, answers, i) {
  const first = answers[0].results[i];
  const card = el("div", { class: "result" });
  const side = el("div", {}, el("div", { class: "name", text: file.name }));
  if (!first.error) side.prepend(el("img", { class: "photo", alt: file.name, src: URL.createObjectURL(file) }));
  card.append(side);
  answers.forEach((answer, column) => {
    const result = answer.results[i];
    const box = el("div", { class: "column" }, el("h3", { text: targetText(answer.target) }));
    if (result.error) {
      box.append(el("div", { class: "error", role: "alert", text: `${result.name}: ${result.error}` }));
    } else {
      result.top.forEach((entry, rank) => {
        const labelAttrs = { class: "label", text: entry.label };
        if (i === 0 && column === 0 && rank === 0) labelAttrs["data-testid"] = "top-label";
        box.append(el("div", { class: "bar" }, el("span", labelAttrs),
          el("div", { class: "track" }, el("div", { class: "fill", style: `width:${100 * (entry.score || 0)}%` })),
          el("span", { class: "score", text: entry.score == null ? "" : entry.score.toFixed(3) })));
      });
    }
    card.append(box);
  });
  return card;
}

// --- Evaluate --------------------------------------------------------------------------

async function loadEval() {
  const select = $("#eval-version");
  const versions = state.versions.filter((v) => v.on_disk);
  if (!versions.length) {
    showMessage("No version folders found: start the console with --model_config_file to see evaluations.");
    return;
  }
  const previous = select.value;
  select.replaceChildren(...versions.map((v) => el("option", { value: v.version,
    text: `version ${v.version}${v.labels.length ? " (" + v.labels.join(", ") + ")" : ""}` })));
  const stable = versions.find((v) => v.labels.includes("stable"));
  select.value = previous && versions.some((v) => String(v.version) === previous) ? previous
    : String((stable || versions[0]).version);
  await showEval(select.value);
}

async function showEval(version) {
  clearMessage();
  selectedCell = null;
  $("#gallery").hidden = true;
  try {
    evalData = await getJSON(`/api/eval/${version}`);
  } catch (e) {
    evalData = null;
    $("#confusion").replaceChildren();
    $("#per-class").replaceChildren();
    $("#eval-summary").textContent = "";
    showMessage(`Version ${version}: ${e.message}`);
    return;
  }
  const m = evalData.metrics;
  $("#eval-summary").textContent = `Version ${version}: accuracy ${pct(m.accuracy)} on ` +
    `${evalData.predictions.length || m.n_eval || "?"} eval photos` + (m.backbone ? `, backbone ${m.backbone}` : "") +
    (m.steps ? `, ${m.steps} steps` : "");
  $("#eval-report").hidden = !evalData.report;
  $("#eval-report").href = `/api/eval/${version}/report`;
  renderEval();
}

// The trainer's rule (flowers/train/metrics.py): a row's true class is the predicted one when it
// is among its labels, else its first label in dict order. Rows scoring under the threshold
// are left out of the matrix and of precision; recall still counts them as missed.
function evaluateAt(threshold) {
  const labels = evalData.labels, n = labels.length;
  const matrix = labels.map(() => new Array(n).fill(0));
  const cells = labels.map(() => labels.map(() => []));
  const support = new Array(n).fill(0);
  let kept = 0, counted = 0;
  evalData.predictions.forEach((p, index) => {
    const ids = p.labels.map((l) => labels.indexOf(l)).filter((x) => x >= 0).sort((a, b) => a - b);
    const predicted = labels.indexOf(p.predicted);
    if (!ids.length || predicted < 0) return;
    const truth = ids.includes(predicted) ? predicted : ids[0];
    support[truth] += 1;
    counted += 1;
    if (p.score >= threshold) {
      matrix[truth][predicted] += 1;
      cells[truth][predicted].push(index);
      kept += 1;
    }
  });
  const perClass = labels.map((label, c) => {
    const predictedC = matrix.reduce((sum, row) => sum + row[c], 0);
    const precision = predictedC ? matrix[c][c] / predictedC : 0;
    const recall = support[c] ? matrix[c][c] / support[c] : 0;
    const f1 = precision + recall ? 2 * precision * recall / (precision + recall) : 0;
    return { label, precision, recall, f1, support: support[c] };
  });
  return { matrix, cells, perClass, kept, counted };
}

function renderEval() {
  if (!evalData) return;
  const threshold = Number($("#threshold").value);
  $("#threshold-value").textContent = threshold.toFixed(2);
  const at = evaluateAt(threshold);
  $("#eval-kept").textContent = `${at.kept} of ${at.counted} predictions at or above the threshold`;
  const labels = evalData.labels;
  const header = el("tr", {}, el("th", { text: "true \\ predicted" }), ...labels.map((l) => el("th", { text: l })));
  const rows = labels.map((label, i) => {
    const total = at.matrix[i].reduce((a, b) => a + b, 0) || 1;
    return el("tr", {}, el("th", { text: label }), ...labels.map((_, j) => {
      const share = at.matrix[i][j] / total;
      const color = i === j ? `rgba(46,93,52,${0.1 + 0.8 * share})` : `rgba(200,40,40,${share ? 0.1 + 0.7 * share : 0})`;
      const button = el("button", { type: "button", "data-true": label, "data-predicted": labels[j],
        style: `background:${color};color:${share > 0.6 ? "white" : "black"}`, text: String(at.matrix[i][j]),
        title: `true ${label}, predicted ${labels[j]}`, onclick: () => { selectedCell = [i, j]; renderEval(); } });
      if (selectedCell && selectedCell[0] === i && selectedCell[1] === j) button.classList.add("selected");
      return el("td", { class: "cell" }, button);
    }));
  });
  $("#confusion").replaceChildren(header, ...rows);
  $("#per-class").replaceChildren(
    el("tr", {}, ...["label", "precision", "recall", "F1", "support"].map((h) => el("th", { text: h }))),
    ...at.perClass.map((r) => el("tr", { "data-label": r.label }, el("td", { text: r.label }),
      el("td", { class: "precision", text: num(r.precision) }), el("td", { class: "recall", text: num(r.recall) }),
      el("td", { text: num(r.f1) }), el("td", { text: String(r.support) }))));
  if (selectedCell) renderGallery(at.cells[selectedCell[0]][selectedCell[1]]);
}

function renderGallery(indices) {
  const [i, j] = selectedCell, labels = evalData.labels;
  const version = $("#eval-version").value;
  $("#gallery").hidden = false;
  $("#gallery-title").textContent = `True ${labels[i]}, predicted ${labels[j]}: ${indices.length} photo(s)`;
  $("#gallery-photos").replaceChildren(...indices.map((index) => {
    const p = evalData.predictions[index];
    return el("figure", {}, el("img", { src: `/api/eval/${version}/photos/${index}`, alt: p.name, loading: "lazy" }),
      el("figcaption", { text: `${p.name} · ${p.predicted} ${p.score.toFixed(2)}` }));
  }));
}

// --- Versions --------------------------------------------------------------------------

function renderVersions() {
  const c = state.config;
  const facts = [`Server ${state.server}, model ${state.model}.`];
  if (!c) facts.push("No --model_config_file: labels, policy and evaluations are unknown.");
  else if (c.error) facts.push(`Config ${c.file}: ${c.error}`);
  else facts.push(`Config ${c.file}: base path ${c.base_path}, policy ${c.policy}, labels ` +
    (Object.entries(c.labels).map(([k, v]) => `${k} → ${v}`).join(", ") || "none") + ".");
  $("#config-facts").textContent = facts.join(" ");
  const heads = ["version", "server state", "labels (config)", "labels (server)", "policy serves it", "accuracy", "created"];
  $("#versions").replaceChildren(el("tr", {}, ...heads.map((h) => el("th", { text: h }))),
    ...state.versions.map((v) => el("tr", { "data-version": v.version },
      el("td", { text: String(v.version) }),
      el("td", { class: `state-${v.state}`, text: v.state + (v.error ? `: ${v.error}` : "") }),
      el("td", { text: v.labels.join(", ") }), el("td", { text: v.server_labels.join(", ") }),
      el("td", { text: c && !c.error ? (v.in_policy ? "yes" : "no") : "?" }),
      el("td", { text: pct(v.accuracy) }), el("td", { text: v.created || "–" }))));
}

// --- Wiring ----------------------------------------------------------------------------

async function route() {
  const page = (location.hash || "#try").slice(1);
  for (const section of document.querySelectorAll(".page")) section.hidden = section.id !== `page-${page}`;
  for (const link of document.querySelectorAll("nav a")) link.classList.toggle("active", link.dataset.page === page);
  clearMessage();
  try {
    stateLoading = loadState();
    await stateLoading;
    if (page === "evaluate") await loadEval();
    if (page === "versions") renderVersions();
  } catch (e) {
    showMessage(`Cannot reach the console: ${e.message}`);
  }
}

$("#target").addEventListener("change", updateCanaryBox);
$("#photos").addEventListener("change", (e) => {
  const files = [...e.target.files];
  e.target.value = "";  // choosing the same photo again fires "change" again
  if (files.length) upload(files);
});
const drop = $("#drop");
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => {
  e.preventDefault();
  drop.classList.remove("over");
  if (e.dataTransfer.files.length) upload([...e.dataTransfer.files]);
});
$("#eval-version").addEventListener("change", (e) => showEval(e.target.value));
$("#threshold").addEventListener("input", renderEval);
window.addEventListener("hashchange", route);
route();
