// The demo page of serve.py: sends a photo to POST /api/segment and draws the answer.
// State for tests and scripts: document.body.dataset.state is loading, ready, busy, done or error.
"use strict";

const $ = (id) => document.getElementById(id);
let info = null;            // GET /api/info
let photo = null;           // {file, stem, url}
let answer = null;          // the API's answer being shown
let ids = null;             // Uint8Array (H * W) label ids of that answer
const answers = new Map();  // postprocess method -> answer, for the current photo
const hidden = new Set();   // label ids not drawn
const cut = new Set();      // label ids in the cut-out
let asked = 0;              // requests sent; an answer to an older one is dropped

const mb = (bytes) => (bytes / 2 ** 20).toFixed(1).replace(/\.0$/, "");
const colourKey = (r, g, b) => (r << 16) | (g << 8) | b;

function setState(state) { document.body.dataset.state = state; }

function say(text, kind = "error") {
  const box = $("message");
  box.textContent = text;
  box.className = kind;
  box.hidden = !text;
}

async function start() {
  try {
    const response = await fetch("/api/info");
    if (!response.ok) throw new Error(`status ${response.status}`);
    info = await response.json();
  } catch (err) {
    say(`Could not ask the server about its model (${err.message}); is serve.py still running?`);
    setState("error");
    return;
  }
  const lim = info.limits;
  const mapped = info.label_map ? `, mapped by ${info.label_map}` : "";
  $("model").textContent = `Model ${info.model}: ${info.labels.length} labels (${info.label_set}${mapped}), ` +
    `photos scaled to ${info.image_size} px.`;
  $("limits").textContent = `JPEG, PNG or WebP, any size up to ${mb(lim.max_bytes)} MB and ` +
    `${Math.round(lim.max_pixels / 1e6)} megapixels.`;
  for (const method of info.postprocess) {
    const option = new Option(method === "none" ? "off (argmax)" : method, method);
    option.selected = method === info.default_postprocess;
    $("postprocess").add(option);
  }
  for (const url of info.samples) {
    const button = document.createElement("button");
    button.type = "button";
    button.title = url.split("/").pop();
    button.append(Object.assign(new Image(), { src: url, alt: `sample ${button.title}` }));
    button.addEventListener("click", () => useSample(url));
    $("samples").append(button);
  }
  $("file").addEventListener("change", (event) => usePhoto(event.target.files[0]));
  for (const target of [$("drop"), document.body]) {
    target.addEventListener("dragover", (event) => { event.preventDefault(); $("drop").classList.add("over"); });
    target.addEventListener("dragleave", () => $("drop").classList.remove("over"));
    target.addEventListener("drop", (event) => {
      event.preventDefault();
      $("drop").classList.remove("over");
      usePhoto(event.dataTransfer.files[0]);
    });
  }
  $("postprocess").addEventListener("change", segment);
  $("opacity").addEventListener("input", setOpacity);
  for (const radio of document.querySelectorAll("input[name=view]")) radio.addEventListener("change", setView);
  $("cutout").addEventListener("click", downloadCutout);
  setState("ready");
}

async function useSample(url) {
  setState("busy");
  try {
    const response = await fetch(url);
    if (!response.ok) throw new Error(`status ${response.status}`);
    const blob = await response.blob();
    usePhoto(new File([blob], url.split("/").pop(), { type: blob.type }));
  } catch (err) {
    say(`Could not load the sample ${url} (${err.message}).`);
    setState("error");
  }
}

function refuse(text) {
  say(text);
  setState("error");
}

function usePhoto(file) {
  if (!file) return;
  const lim = info.limits;
  if (file.type && !file.type.startsWith("image/")) {
    return refuse(`${file.name} is not an image (${file.type}): choose a JPEG, PNG or WebP photo.`);
  }
  if (file.size === 0) return refuse(`${file.name} is empty.`);
  if (file.size > lim.max_bytes) {
    return refuse(`${file.name} is ${mb(file.size)} MB, too large: the limit is ${mb(lim.max_bytes)} MB.`);
  }
  if (photo) URL.revokeObjectURL(photo.url);
  photo = { file, stem: file.name.replace(/\.[^.]*$/, "") || "photo", url: URL.createObjectURL(file) };
  answers.clear();
  $("photo").src = photo.url;
  segment();
}

function errorText(status, message) {
  const prefix = { 400: "This photo cannot be used", 413: "Too large", 415: "Not an image",
                   503: "The server is busy" }[status] || `The server answered ${status}`;
  return `${prefix}: ${message}`;
}

async function segment() {
  if (!photo) return;
  const method = $("postprocess").value;
  if (answers.has(method)) return show(answers.get(method));
  const mine = ++asked;
  setState("busy");
  say(`Segmenting ${photo.file.name}\u2026`, "info");
  let response, body;
  try {
    response = await fetch(`/api/segment?postprocess=${encodeURIComponent(method)}&overlay=0`, {
      method: "POST", body: photo.file,
      headers: { "Content-Type": photo.file.type || "application/octet-stream" },
    });
  } catch (err) {
    if (mine === asked) { say(`Could not reach the server (${err.message}); is serve.py still running?`); setState("error"); }
    return;
  }
  try { body = await response.json(); } catch { body = { error: "no readable message" }; }
  if (mine !== asked) return;
  if (!response.ok) {
    say(errorText(response.status, body.error));
    setState("error");
    return;
  }
  answers.set(method, body);
  await show(body);
}

function loadImage(src) {
  return new Promise((resolve, reject) => {
    const image = new Image();
    image.onload = () => resolve(image);
    image.onerror = () => reject(new Error("the image could not be decoded"));
    image.src = src;
  });
}

async function show(result) {
  const mine = asked;
  const labels = await loadImage(`data:image/png;base64,${result.label_png}`);
  if (mine !== asked) return;
  const { width: W, height: H } = result;
  const canvas = Object.assign(document.createElement("canvas"), { width: W, height: H });
  const context = canvas.getContext("2d", { willReadFrequently: true });
  context.drawImage(labels, 0, 0);
  const rgba = context.getImageData(0, 0, W, H).data;
  // the server gives every id its own colour (255: a pixel the label map leaves unmapped)
  const byColour = new Map(result.palette.map((colour, id) => [colourKey(...colour), id]));
  if (result.unmapped) byColour.set(colourKey(...result.unmapped.color), 255);
  ids = new Uint8Array(W * H);
  for (let i = 0; i < ids.length; i++) ids[i] = byColour.get(colourKey(rgba[4 * i], rgba[4 * i + 1], rgba[4 * i + 2])) ?? 255;
  answer = result;
  const overlay = $("overlay");
  overlay.width = W;
  overlay.height = H;
  $("boundary").src = `data:image/png;base64,${result.boundary_png}`;
  say("");
  await ensurePhoto(W, H);
  hidden.clear();
  fillLegend();
  drawOverlay();
  setDownloads();
  setOpacity();
  setView();
  const seconds = result.seconds;
  $("timing").textContent = `${W}\u00d7${H} px; ` + Object.entries(seconds).map(([k, v]) => `${k} ${v.toFixed(2)} s`).join(", ");
  $("result").hidden = false;
  setState("done");
}

async function ensurePhoto(W, H) {
  const img = $("photo");
  try { await img.decode(); } catch { /* shown below */ }
  if (img.naturalWidth === W && img.naturalHeight === H) return;
  if (img.naturalWidth === 0) {
    const blank = Object.assign(document.createElement("canvas"), { width: W, height: H });
    blank.getContext("2d").fillRect(0, 0, W, H);
    img.src = blank.toDataURL();
    await img.decode();
    say("This browser cannot display the photo's format; the labels are shown on black.", "info");
  } else {
    say(`This browser shows the photo as ${img.naturalWidth}\u00d7${img.naturalHeight}, the server read it as ` +
        `${W}\u00d7${H} (its EXIF rotation?): the labels may not line up.`, "info");
  }
}

function fillLegend() {
  const body = $("legend").tBodies[0];
  body.replaceChildren();
  const present = Object.entries(answer.labels).sort((a, b) => b[1].pixels - a[1].pixels);
  for (const [name, { id, fraction }] of present) {
    const row = body.insertRow();
    const show = Object.assign(document.createElement("input"), { type: "checkbox", checked: !hidden.has(id) });
    show.setAttribute("aria-label", `show ${name}`);
    show.dataset.label = name;
    show.addEventListener("change", () => { show.checked ? hidden.delete(id) : hidden.add(id); drawOverlay(); });
    const pick = Object.assign(document.createElement("input"), { type: "checkbox", checked: cut.has(id) });
    pick.setAttribute("aria-label", `${name} in the cut-out`);
    pick.addEventListener("change", () => { pick.checked ? cut.add(id) : cut.delete(id); });
    const swatch = document.createElement("span");
    swatch.className = "swatch";
    swatch.style.background = `rgb(${answer.palette[id].join(",")})`;
    row.insertCell().append(show);
    row.insertCell().append(swatch, name);
    Object.assign(row.insertCell(), { className: "area", textContent: `${(100 * fraction).toFixed(1)}%` });
    row.insertCell().append(pick);
  }
  if (answer.unmapped && answer.unmapped.pixels) {  // with the server's --label_map
    const row = body.insertRow();
    row.insertCell();
    row.insertCell().textContent = `no ${answer.label_set} counterpart (photo shown)`;
    Object.assign(row.insertCell(), { className: "area", textContent: `${(100 * answer.unmapped.fraction).toFixed(1)}%` });
    row.insertCell();
  }
}

function drawOverlay() {
  const overlay = $("overlay");
  const context = overlay.getContext("2d");
  const image = context.createImageData(overlay.width, overlay.height);
  const colours = answer.palette.map((colour, id) => (hidden.has(id) ? null : colour));  // ids 255: none
  const data = image.data;
  for (let i = 0; i < ids.length; i++) {
    const colour = colours[ids[i]];
    if (!colour) continue;  // stays transparent
    data[4 * i] = colour[0]; data[4 * i + 1] = colour[1]; data[4 * i + 2] = colour[2]; data[4 * i + 3] = 255;
  }
  context.putImageData(image, 0, 0);
}

function setOpacity() {
  const value = $("opacity").value / 100;
  $("overlay").style.opacity = value;
  $("boundary").style.opacity = value;
}

function setView() {
  const boundary = document.querySelector("input[name=view]:checked").value === "boundary";
  $("boundary").hidden = !boundary;
  $("overlay").hidden = boundary;
}

function setDownloads() {
  const bytes = Uint8Array.from(atob(answer.label_png), (c) => c.charCodeAt(0));
  const link = $("labelpng");
  if (link.href.startsWith("blob:")) URL.revokeObjectURL(link.href);
  link.href = URL.createObjectURL(new Blob([bytes], { type: "image/png" }));
  link.download = `${photo.stem}_labels.png`;
  const { label_png, boundary_png, overlay_png, ...summary } = answer;  // predict.py's <stem>.json and more
  const json = $("json");
  if (json.href.startsWith("blob:")) URL.revokeObjectURL(json.href);
  json.href = URL.createObjectURL(new Blob([JSON.stringify({ file: photo.file.name, ...summary }, null, 2)],
                                           { type: "application/json" }));
  json.download = `${photo.stem}.json`;
}

function downloadCutout() {
  if (!answer) return;
  if (cut.size === 0 || ![...cut].some((id) => answer.label_names[id] in answer.labels)) {
    return say("Tick at least one label under \u201ccut out\u201d first.", "info");
  }
  const { width: W, height: H } = answer;
  const canvas = Object.assign(document.createElement("canvas"), { width: W, height: H });
  const context = canvas.getContext("2d");
  context.drawImage($("photo"), 0, 0, W, H);
  const image = context.getImageData(0, 0, W, H);
  for (let i = 0; i < ids.length; i++) image.data[4 * i + 3] = cut.has(ids[i]) ? 255 : 0;
  context.putImageData(image, 0, 0);
  canvas.toBlob((blob) => {
    const link = Object.assign(document.createElement("a"), { href: URL.createObjectURL(blob), download: `${photo.stem}_cutout.png` });
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(link.href), 10000);
  }, "image/png");
}

start();
