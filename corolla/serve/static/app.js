// The corolla page: forms -> JSON requests; server-sent events -> previews and results.
"use strict";

const $ = (id) => document.getElementById(id);

// POST a JSON request and call onEvent(name, data) for each server-sent event of the answer.
// A refusal (HTTP 4xx with {"error"}) and an 'error' event both throw, with the server's message.
async function streamRequest(url, body, onEvent, signal) {
  const response = await fetch(url, {method: "POST", headers: {"Content-Type": "application/json"},
                                     body: JSON.stringify(body), signal});
  if (!response.ok) {
    const answer = await response.json().catch(() => ({error: `the server answered ${response.status}`}));
    throw new Error(answer.error);
  }
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const {value, done} = await reader.read();
    if (done) break;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const name = (block.match(/^event: (.*)$/m) || [])[1];
      const data = JSON.parse((block.match(/^data: (.*)$/m) || [])[1] || "{}");
      if (name === "error") throw new Error(data.message);
      onEvent(name, data);
    }
  }
}

// One request per panel at a time: a new one aborts the one before (the server then stops it).
function panel(prefix) {
  let controller = null;
  return async function run(url, body, onEvent) {
    if (controller) controller.abort();
    controller = new AbortController();
    const mine = controller;
    $(prefix + "-message").textContent = "";
    try {
      await streamRequest(url, body, onEvent, mine.signal);
    } catch (error) {
      if (error.name !== "AbortError") {
        $(prefix + "-message").textContent = error.message;
        $(prefix + "-status").textContent = "";
      }
    } finally {
      if (controller === mine) controller = null;
    }
  };
}

const generatePanel = panel("generate");
$("generate-form").addEventListener("submit", (e) => {
  e.preventDefault();
  const body = {seed: $("seed").value, count: $("count").value, steps: $("steps").value,
                sampler: $("sampler").value, eta: $("eta").value};
  if ($("grid").value) body.grid = $("grid").value;
  // a conditional model: one row per chosen class ("any" is null: a row of the unconditional
  // model); guidance only goes with a class, as `corolla sample --guidance` needs --class
  const chosen = [...$("classes").selectedOptions].map((o) => (o.value === "" ? null : Number(o.value)));
  if (chosen.some((c) => c !== null)) Object.assign(body, {classes: chosen, guidance: $("guidance").value});
  const started = performance.now();
  let previews = 0;
  $("generate-status").textContent = "starting...";
  $("generate-download").hidden = true;
  generatePanel("/api/generate", body, (name, data) => {
    if (name === "step") {  // the images the network predicts at this step of the reverse process
      previews += 1;
      $("generate-image").src = data.image;
      $("generate-status").textContent = `step ${data.step}/${data.steps}`;
    } else if (name === "done") {
      $("generate-image").src = data.image;
      $("generate-download").href = data.image;
      $("generate-download").download = `corolla-seed${data.seed}-${data.count}x${data.steps}steps.png`;
      $("generate-download").hidden = false;
      const seconds = ((performance.now() - started) / 1000).toFixed(2);
      const classes = data.classes.length ? ` per class (${data.classes.map((c) => c ?? "any").join(", ")}; ` +
                                            `guidance ${data.guidance})` : "";
      $("generate-status").textContent = `done: ${data.count} images${classes}, seed ${data.seed}, ` +
        `${data.steps} steps, ${previews} previews, ${seconds} s`;
    }
  });
});

let frames = [], weights = [];
function showFrame() {
  const i = Number($("interp-slider").value);
  $("interp-image").src = frames[i];
  $("interp-weight").textContent = `frame ${i + 1}/${frames.length}, w = ${weights[i].toFixed(2)}`;
}
// A chosen file as a data: URL (the request carries the file itself; the server reads it as
// `corolla edit` reads a file).
function readFile(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(new Error(`could not read ${file.name}`));
    reader.readAsDataURL(file);
  });
}

async function addFile(body, key, input) {
  const file = input.files[0];
  if (!file) return;
  body[key] = await readFile(file);
  body[key + "_name"] = file.name;
}

const interpolatePanel = panel("interp");
$("interp-use-seeds").addEventListener("click", () => {
  $("interp-first-photo").value = "";
  $("interp-second-photo").value = "";
});
$("interpolate-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const body = {first: $("interp-first").value, second: $("interp-second").value,
                frames: $("interp-frames").value, steps: $("interp-steps").value};
  await addFile(body, "first_photo", $("interp-first-photo"));
  await addFile(body, "second_photo", $("interp-second-photo"));
  const ends = body.first_photo ? `${body.first_photo_name} to ${body.second_photo_name || "?"}`
                                : `seed ${body.first} to seed ${body.second}`;
  $("interp-status").textContent = body.first_photo ? "inverting the photos..." : "starting...";
  interpolatePanel("/api/interpolate", body, (name, data) => {
    if (name === "step") {
      $("interp-status").textContent = `step ${data.step}/${data.steps}`;
    } else if (name === "done") {
      frames = data.frames;
      weights = data.weights;
      $("interp-slider").max = String(frames.length - 1);
      $("interp-slider").value = "0";
      $("interp-view").hidden = false;
      $("interp-status").textContent = `done: ${frames.length} frames from ${ends}`;
      showFrame();
    }
  });
});
$("interp-slider").addEventListener("input", showFrame);

// -- a photo: SDEdit, and inpainting of a region painted over it ----------------------------------
let photo = null;  // {url, name} of the chosen file
const canvas = $("mask-canvas"), brush = canvas.getContext("2d");

$("photo-file").addEventListener("change", async () => {
  const file = $("photo-file").files[0];
  if (!file) return;
  photo = {url: await readFile(file), name: file.name};
  $("photo-preview").src = photo.url;  // the mask canvas takes the photo's own size once it loads
  $("photo-message").textContent = "";
});
$("photo-preview").addEventListener("load", () => {
  canvas.width = $("photo-preview").naturalWidth;
  canvas.height = $("photo-preview").naturalHeight;
  $("photo-stage").hidden = false;
});
$("photo-preview").addEventListener("error", () => {
  $("photo-stage").hidden = true;  // the browser cannot show it: the server will say why it refuses it
});

let last = null;
function paint(e) {
  const box = canvas.getBoundingClientRect(), scale = canvas.width / box.width;
  const point = [(e.clientX - box.left) * scale, (e.clientY - box.top) * scale];
  brush.strokeStyle = "white";
  brush.lineCap = "round";
  brush.lineWidth = Math.max(1, Number($("brush").value) || 12) * scale;
  brush.beginPath();
  brush.moveTo(...(last || point));
  brush.lineTo(...point);
  brush.stroke();
  last = point;
}
canvas.addEventListener("pointerdown", (e) => { canvas.setPointerCapture(e.pointerId); last = null; paint(e); });
canvas.addEventListener("pointermove", (e) => { if (e.buttons) paint(e); });
canvas.addEventListener("pointerup", () => { last = null; });
$("clear-mask").addEventListener("click", () => brush.clearRect(0, 0, canvas.width, canvas.height));

const photoPanel = panel("photo");
function photoRequest(url, body, caption) {
  if (photo) Object.assign(body, {photo: photo.url, photo_name: photo.name});
  $("photo-status").textContent = "working...";
  return photoPanel(url, body, (name, data) => {
    if (name !== "done") return;
    $("photo-input").src = data.input;
    $("photo-mask-figure").hidden = !data.mask;
    if (data.mask) $("photo-mask").src = data.mask;
    $("photo-result").src = data.image;
    $("photo-caption").textContent = caption;
    $("photo-status").textContent = `done: ${caption}`;
  });
}
$("edit-form").addEventListener("submit", (e) => {
  e.preventDefault();
  const body = {strength: $("edit-strength").value, steps: $("edit-steps").value, seed: $("edit-seed").value};
  photoRequest("/api/edit", body, `SDEdit at strength ${body.strength}, ${body.steps} steps, seed ${body.seed}`);
});
$("inpaint-form").addEventListener("submit", (e) => {
  e.preventDefault();
  const body = {steps: $("inpaint-steps").value, resample: $("inpaint-resample").value,
                jump: $("inpaint-jump").value, seed: $("inpaint-seed").value};
  if (photo) body.mask = canvas.toDataURL("image/png");  // white where painted, transparent (kept) elsewhere
  photoRequest("/api/inpaint", body, `inpainted: ${body.steps} steps, resample ${body.resample}, seed ${body.seed}`);
});

// -- the training run: the loss curve and the per-epoch grids, read again every refresh_s --------
const SVG = "http://www.w3.org/2000/svg";
function svgElement(name, attributes, text) {
  const element = document.createElementNS(SVG, name);
  for (const [key, value] of Object.entries(attributes)) element.setAttribute(key, value);
  if (text !== undefined) element.textContent = text;
  return element;
}

function drawCurve(train, val) {
  const svg = $("loss-curve");
  svg.replaceChildren();
  const all = train.concat(val);
  if (!all.length) {
    svg.append(svgElement("text", {x: 20, y: 130}, "no loss logged yet"));
    return;
  }
  const [left, right, top, bottom] = [50, 630, 10, 230];
  const steps = all.map((p) => p[0]), losses = all.map((p) => p[1]);
  const [x0, x1] = [Math.min(...steps), Math.max(...steps)], [y0, y1] = [Math.min(...losses), Math.max(...losses)];
  const x = (s) => left + (x1 > x0 ? (s - x0) / (x1 - x0) : 0.5) * (right - left);
  const y = (v) => bottom - (y1 > y0 ? (v - y0) / (y1 - y0) : 0.5) * (bottom - top);
  svg.append(svgElement("path", {class: "axis", d: `M${left},${top}V${bottom}H${right}`}),
             svgElement("text", {x: 2, y: top + 10}, y1.toPrecision(3)),
             svgElement("text", {x: 2, y: bottom}, y0.toPrecision(3)),
             svgElement("text", {x: left, y: bottom + 16}, `step ${x0}`),
             svgElement("text", {x: right - 70, y: bottom + 16}, `step ${x1}`));
  for (const [points, name] of [[train, "train"], [val, "val"]]) {
    if (!points.length) continue;
    const xy = points.map((p) => [x(p[0]).toFixed(1), y(p[1]).toFixed(1)]);
    svg.append(svgElement("polyline", {class: name, "data-points": points.length, points: xy.join(" ")}));
    if (name === "val") {  // one point per epoch: markers, so a single epoch shows too
      svg.append(...xy.map(([cx, cy]) => svgElement("circle", {class: name, cx, cy, r: 3})));
    }
  }
}

let shownGrid = null;
function showGrid(name) {
  shownGrid = name;
  $("run-grid").src = `/api/run/samples/${name}`;
  $("run-grid").hidden = false;
  for (const link of $("run-grids").children) link.classList.toggle("shown", link.textContent === name);
}

async function refreshRun() {
  try {
    const response = await fetch("/api/run");
    const run = await response.json();
    if (!response.ok) throw new Error(run.error);
    drawCurve(run.train, run.val);
    const latest = run.grids[run.grids.length - 1];
    const follow = shownGrid === null || shownGrid === $("run-grids").lastElementChild?.textContent;
    $("run-grids").replaceChildren(...run.grids.map((name) => {
      const link = document.createElement("a");
      link.href = "#";
      link.textContent = name;
      link.addEventListener("click", (e) => { e.preventDefault(); showGrid(name); });
      return link;
    }));
    if (latest && follow) showGrid(latest);  // keep following the newest epoch unless one was picked
    else if (shownGrid) showGrid(shownGrid);
    const lastStep = run.train.length ? run.train[run.train.length - 1][0] : 0;
    $("run-status").textContent = `${run.train.length} train and ${run.val.length} validation points ` +
      `(last step ${lastStep}), ${run.grids.length} grids; read at ${new Date().toLocaleTimeString()}`;
  } catch (error) {
    $("run-status").textContent = `could not read the run: ${error.message}`;
  }
}

async function start() {
  const info = await (await fetch("/api/info")).json();
  const conditional = info.classes.length ? `, conditional on ${info.classes.length} classes` : "";
  $("model-info").textContent =
    `${info.model}: ${info.image_size}x${info.image_size} images${conditional}, on ${info.device}`;
  $("sampler").replaceChildren(...info.samplers.map((name) => new Option(name, name, false, name === "ddim")));
  $("grid").append(...info.grids.map((name) => new Option(name, name)));
  $("generate-hint").textContent = `at most ${info.max_images} images and ${info.max_steps} steps per request; ` +
    `eta above 0 (stochastic) with ddim only`;
  if (info.classes.length) {
    $("classes").replaceChildren(new Option("any (unconditional)", "", true, true),
                                 ...info.classes.map((name, number) => new Option(name, number)));
    $("guidance").value = info.guidance;
    $("class-hint").textContent = `Several classes (Ctrl-click): one row each, image j of every row from the ` +
      `same noise. Guidance 0 to ${info.max_guidance}: 0 is the unconditional model, 1 the conditional one, ` +
      `more follows the class more closely.`;
    for (const id of ["class-label", "guidance-label", "class-hint"]) $(id).hidden = false;
  }
  if (info.run) {
    $("run-panel").hidden = false;
    $("run-name").textContent = info.run;
    await refreshRun();
    setInterval(refreshRun, info.refresh_s * 1000);
  }
  document.body.dataset.ready = "true";
}
start();
