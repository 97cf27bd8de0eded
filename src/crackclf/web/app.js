// crackclf's page: send each dropped or chosen file to POST /api/predict, show its crack map.
// Everything it needs comes from this server (no CDN): it works offline.
"use strict";

const PARALLEL = 2; // files in flight at once; the server batches their tiles together
const queue = [];
let running = 0;
let explainable = false; // the model offers a Grad-CAM view (GET /api/model says so)

function el(card, selector) { return card.querySelector(selector); }

function percent(p) { return (100 * p).toFixed(p >= 0.995 || p < 0.005 ? 1 : 0) + " %"; }

async function showModel() {
  const line = document.getElementById("model");
  try {
    const r = await fetch("/api/model");
    const m = await r.json();
    explainable = Boolean(m.explain);
    const which = m.version ? `${m.name} version ${m.version}` : m.name || m.model;
    line.textContent = `Model: ${which}, threshold ${Number(m.threshold).toFixed(3)}, ${m.image_size} px input`;
  } catch (err) {
    line.textContent = "The server does not answer: is crackclf serve running?";
  }
}

function addCard(file) {
  const card = document.getElementById("card").content.firstElementChild.cloneNode(true);
  card.dataset.name = file.name;
  el(card, ".name").textContent = file.name;
  document.getElementById("results").append(card);
  queue.push({ file, card, started: performance.now() });
  pump();
}

function pump() {
  while (running < PARALLEL && queue.length) {
    running += 1;
    send(queue.shift()).finally(() => { running -= 1; pump(); });
  }
}

function fail(card, message) {
  card.dataset.state = "error";
  el(card, ".status").hidden = true;
  const box = el(card, ".error");
  box.textContent = message;
  box.hidden = false;
}

function send({ file, card, started }) {
  return new Promise((resolve) => {
    const form = new FormData();
    form.append("files", file, file.name);
    const xhr = new XMLHttpRequest();
    const bar = el(card, "progress");
    xhr.open("POST", "/api/predict");
    xhr.responseType = "json";
    xhr.upload.onprogress = (e) => { if (e.lengthComputable) bar.value = (90 * e.loaded) / e.total; };
    xhr.upload.onload = () => { bar.removeAttribute("value"); el(card, ".what").textContent = "finding cracks"; };
    xhr.onerror = () => { fail(card, "The server could not be reached."); resolve(); };
    xhr.onload = () => {
      const body = xhr.response;
      const answer = Array.isArray(body) ? body[0] : null;
      if (!answer) {
        const detail = body && body.detail ? body.detail : `HTTP ${xhr.status}`;
        fail(card, typeof detail === "string" ? detail : JSON.stringify(detail));
      } else if (answer.error) {
        fail(card, answer.error);
      } else {
        show(card, answer, started);
      }
      resolve();
    };
    xhr.send(form);
  });
}

function show(card, a, started) {
  card.dataset.label = a.label;
  el(card, ".what").textContent = "drawing the map";
  el(card, ".label").textContent = a.label === "crack" ? "crack" : "no crack";
  el(card, ".prob").textContent = `crack probability ${percent(a.probability)} (threshold ${percent(a.threshold)})`;
  el(card, ".tiles").textContent = a.tiles;
  el(card, ".crack-tiles").textContent = a.crack_tiles;
  const odd = a.tile_table.filter((t) => t.unfamiliar).length;
  if (a.unfamiliar || odd) {
    el(card, ".odd-note").textContent = `; ${odd || "the image"}${odd ? " unfamiliar" : " is unfamiliar"}: answers there are unreliable`;
  }
  const img = el(card, ".map");
  img.alt = `crack map of ${a.name}: ${a.crack_tiles} of ${a.tiles} tiles cracked`;
  img.onload = () => {
    card.dataset.state = "done";
    card.dataset.ms = Math.round(performance.now() - started);
    el(card, ".status").hidden = true;
    el(card, ".body").hidden = false;
  };
  img.onerror = () => fail(card, "The map could not be loaded (the server may have restarted).");
  img.src = a.map;
  el(card, ".map-link").href = a.map;
  el(card, ".png").href = a.map;
  el(card, ".csv").href = a.csv;
  if (explainable && a.explain) {
    const toggle = el(card, ".cam-toggle");
    const label = el(card, ".cam");
    label.hidden = false;
    toggle.onchange = () => {
      label.classList.add("busy"); // the first Grad-CAM view may take a few seconds
      img.onload = () => label.classList.remove("busy");
      img.onerror = () => { label.classList.remove("busy"); toggle.checked = false; toggle.disabled = true; img.src = a.map; };
      img.src = toggle.checked ? a.explain : a.map;
    };
  }
}

function take(files) { for (const f of files) addCard(f); }

document.addEventListener("DOMContentLoaded", () => {
  showModel();
  const drop = document.getElementById("drop");
  const input = document.getElementById("files");
  input.addEventListener("change", () => { take(input.files); input.value = ""; });
  drop.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); input.click(); } });
  for (const type of ["dragenter", "dragover"]) {
    drop.addEventListener(type, (e) => { e.preventDefault(); drop.classList.add("over"); });
  }
  for (const type of ["dragleave", "drop"]) {
    drop.addEventListener(type, (e) => { e.preventDefault(); drop.classList.remove("over"); });
  }
  drop.addEventListener("drop", (e) => take(e.dataTransfer.files));
  // A file dropped beside the zone would make the browser leave the page: take it instead.
  window.addEventListener("dragover", (e) => e.preventDefault());
  window.addEventListener("drop", (e) => { e.preventDefault(); if (!drop.contains(e.target)) take(e.dataTransfer.files); });
});
