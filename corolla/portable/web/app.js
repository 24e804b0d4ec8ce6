// The page: loads sampler.json and denoiser.onnx (onnxruntime-web, WASM on the CPU), and a cascade's
// layout model from layout/ where sampler.json names one, reads the form, samples with sampler.js and
// draws the predicted images after every step (a cascade's layouts first, upsampled).
// A query ?seed=S&n=N&steps=K[&sampler=NAME][&class=NAME|&random-class][&guidance=G][&noise=FILE]
// generates at load; random-class draws each image's species at the training mix (sampler.json's
// class_mix), as `corolla sample --random-class`; noise=FILE (float32 little-endian, N x C x H x W,
// on this server; a cascade's: each image's layout noise, then its hand-over noise) replaces the
// page's own initial noise, so that a test can start from the noise corolla's Python sampler starts from. body[data-state] tells a test where the page is: loading,
// ready, running, done or error; when done, window.corollaImages holds the images (Float32Array,
// N x C x H x W, in [0, 1]) and window.corollaLabels each image's class (null: unconditional).
import {DEFAULT_GRID, GRIDS, SAMPLERS, SCHEDULES, imageClass, imageNoise, noised, timesFrom, upsampleBicubic}
  from "./sampler.js";

const BATCH = 8;  // images sampled together: previews of a batch at once, bounded memory
const LIMITS = {seed: [0, 4294967295], count: [1, 64], steps: [1, 1000]};
const MAX_GUIDANCE = 100;  // corolla.limits.MAX_GUIDANCE
const MIX = "mix";  // the class menu's value for a species drawn per image (species' values are numbers)
const $ = (id) => document.getElementById(id);

// each {spec, session}: the model, a cascade's layout model (or null), and the one of them whose
// species the form offers (corolla.cascade.classed: the model, unless only the layout model has species)
let model, layout, classed;

function say(text, isError = false) {
  $("message").textContent = text;
  $("message").classList.toggle("error", isError);
}

function setState(state) {
  document.body.dataset.state = state;
  $("generate").disabled = !model || state === "running";  // no model: nothing to run
}

async function loadModel(folder) {  // folder "" or "layout/" -> {spec, session}
  const response = await fetch(`${folder}sampler.json`);
  if (!response.ok) throw new Error(`${folder}sampler.json: HTTP ${response.status}`);
  const spec = await response.json();
  if (!SCHEDULES[spec.schedule]) throw new Error(`unknown schedule ${spec.schedule}`);
  return {spec, session: await ort.InferenceSession.create(`${folder}denoiser.onnx`, {executionProviders: ["wasm"]})};
}

async function load() {
  // threads need a cross-origin isolated page (COOP/COEP headers), which a plain static host is not
  ort.env.wasm.numThreads = self.crossOriginIsolated ? Math.min(4, navigator.hardwareConcurrency || 1) : 1;
  ort.env.wasm.wasmPaths = {mjs: new URL("ort-wasm-simd-threaded.js", location.href).href,
                            wasm: new URL("ort-wasm-simd-threaded.wasm", location.href).href};
  const loaded = await loadModel("");
  layout = loaded.spec.layout ? await loadModel("layout/") : null;
  model = loaded;
  classed = model.spec.classes.length || !layout?.spec.classes.length ? model : layout;
  const spec = classed.spec;
  if (spec.classes.length) {
    $("class").append(new Option("(none: unconditional)", ""),
                      ...(spec.class_mix?.length ? [new Option("(every species, at the data set's mix)", MIX)] : []),
                      ...spec.classes.map((name, number) => new Option(name, String(number))));
    $("class").value = "0";
    $("guidance").value = String(spec.guidance);
    $("class-field").hidden = $("guidance-field").hidden = false;
  }
}

function wholeNumber(text, name) {
  const [low, high] = LIMITS[name];
  const value = Number(text);
  if (text.trim() === "" || !Number.isInteger(value) || value < low || value > high) {
    throw new RangeError(`${name} must be a whole number from ${low} to ${high}`);
  }
  return value;
}

// the form (or the query) -> the run's settings; RangeError with what is allowed
function settings(fields) {
  const spec = classed.spec;
  const run = {seed: wholeNumber(fields.seed, "seed"), count: wholeNumber(fields.count, "count"),
               steps: wholeNumber(fields.steps, "steps"), sampler: fields.sampler, labels: null, mix: Boolean(fields.mix),
               guidance: spec.guidance, noise: fields.noise || null};
  if (!SAMPLERS[run.sampler]) throw new RangeError(`sampler must be one of ${Object.keys(SAMPLERS).join(", ")}`);
  if (fields.label || fields.mix) {
    if (!spec.classes.length) throw new RangeError("this model is not class-conditional: it takes no species");
    run.labels = fields.mix ? drawnLabels(run, fields.label) : new Array(run.count).fill(speciesNumber(fields.label));
    if (fields.guidance !== undefined && fields.guidance !== "") run.guidance = Number(fields.guidance);
    if (!(run.guidance >= 0 && run.guidance <= MAX_GUIDANCE)) {
      throw new RangeError(`guidance must be a number from 0 to ${MAX_GUIDANCE}; 1 is the conditional model alone`);
    }
  }
  return run;
}

function speciesNumber(label) {  // a species by name or number -> its number
  const spec = classed.spec;
  const byName = spec.classes.indexOf(label), number = byName >= 0 ? byName : Number(label);
  if (!Number.isInteger(number) || number < 0 || number >= spec.classes.length) {
    throw new RangeError(`unknown species ${label}`);
  }
  return number;
}

function drawnLabels(run, label) {  // each image's species drawn at the training mix
  if (label) throw new RangeError("give one species or random-class, not both");
  const spec = classed.spec;
  if (!spec.class_mix?.length) {
    throw new RangeError("this export keeps no training mix of species (it was written before corolla exported " +
                         "one): export the model again, or choose a species");
  }
  return Array.from({length: run.count}, (_, i) => imageClass(run.seed, i, spec.class_mix));
}

function formFields() {
  const chosen = $("class-field").hidden ? "" : $("class").value;
  return {seed: $("seed").value, count: $("count").value, steps: $("steps").value, sampler: $("sampler").value,
          label: chosen === MIX ? "" : chosen, mix: chosen === MIX, guidance: $("guidance").value};
}

// a network ({spec, session}) on a batch; labels (BigInt64Array) for a conditional model
async function predictNoise({spec, session}, x, noiseRate, labels) {
  const [channels, size] = [spec.channels, spec.image_size], batch = x.length / (channels * size * size);
  const feeds = {
    noisy_images: new ort.Tensor("float32", x, [batch, channels, size, size]),
    noise_variances: new ort.Tensor("float32", new Float32Array(batch).fill(noiseRate * noiseRate),
                                    [batch, 1, 1, 1]),
  };
  if (spec.classes.length) feeds.labels = new ort.Tensor("int64", labels, [batch]);
  const output = await session.run(feeds);
  return output.pred_noises.data;
}

// the denoiser a sampler calls with network `net`, guided as corolla.portable.sampling.PortableModel.denoiser
// guides; chosen: each image's class, or null (unconditional, and always for an unconditional network)
function denoiser(net, batch, chosen, guidance, scale) {
  if (!net.spec.classes.length) chosen = null;
  const nulls = new BigInt64Array(batch).fill(BigInt(net.spec.classes.length));
  const labels = chosen === null ? nulls : BigInt64Array.from(chosen, BigInt);
  const mixing = chosen !== null && guidance !== 0 && guidance !== 1;
  return async (x, noiseRate, signalRate) => {
    let predNoises;
    if (mixing) {
      const twice = new Float32Array(2 * x.length);
      twice.set(x);
      twice.set(x, x.length);
      const both = new BigInt64Array(2 * batch);
      both.set(labels);
      both.set(nulls, batch);
      const pair = await predictNoise(net, twice, noiseRate, both);
      predNoises = new Float32Array(x.length);
      for (let j = 0; j < x.length; j++) {
        const uncond = pair[x.length + j];
        predNoises[j] = uncond + guidance * (pair[j] - uncond);
      }
    } else {
      predNoises = await predictNoise(net, x, noiseRate, guidance === 0 ? nulls : labels);
    }
    // epsilon scaling, as corolla.samplers.scaled_noise at the export's own scale for the sampler
    // (samplers.own_eps_scale: sampler.json's eps_scale for ddim, its multistep_eps_scale for the others)
    if (scale !== 1) for (let j = 0; j < x.length; j++) predNoises[j] /= scale;
    const predImages = new Float32Array(x.length);
    for (let j = 0; j < x.length; j++) predImages[j] = (x[j] - noiseRate * predNoises[j]) / signalRate;
    return [predNoises, predImages];
  };
}

// the scale a network's noise is divided by: samplers.own_eps_scale (absent fields: 1, then eps_scale),
// or, finishing a cascade's hand-over, the export's handover_eps_scale where it has one
function epsScale({spec}, sampler, handover = false) {
  if (handover && spec.handover_eps_scale != null) return spec.handover_eps_scale;
  const ddim = spec.eps_scale ?? 1;
  return sampler === "ddim" ? ddim : spec.multistep_eps_scale ?? ddim;
}

function denormalize({spec}, images) {  // clip(mean + x sqrt(variance), 0, 1), per channel
  const plane = spec.image_size * spec.image_size, out = new Float32Array(images.length);
  for (let j = 0; j < images.length; j++) {
    const c = Math.floor(j / plane) % spec.channels;
    const value = spec.normalizer.mean[c] + images[j] * Math.sqrt(spec.normalizer.variance[c]);
    out[j] = Math.min(Math.max(value, 0), 1);
  }
  return out;
}

function normalize({spec}, images) {  // (images - mean) / max(sqrt(variance), 1e-7): folder.NORMALIZATION_EPS
  const plane = spec.image_size * spec.image_size, out = new Float32Array(images.length);
  for (let j = 0; j < images.length; j++) {
    const c = Math.floor(j / plane) % spec.channels;
    out[j] = (images[j] - spec.normalizer.mean[c]) / Math.max(Math.sqrt(spec.normalizer.variance[c]), 1e-7);
  }
  return out;
}

function draw(canvas, image) {  // one denormalised image (C, H, W) of the model's size onto its canvas
  const spec = model.spec, size = spec.image_size, plane = size * size, pixels = new ImageData(size, size);
  for (let p = 0; p < plane; p++) {
    for (let k = 0; k < 3; k++) {
      const channel = spec.channels === 3 ? k : 0;
      pixels.data[4 * p + k] = Math.round(image[channel * plane + p] * 255);
    }
    pixels.data[4 * p + 3] = 255;
  }
  canvas.getContext("2d").putImageData(pixels, 0, 0);
}

// each image's starting noise: the model's, or a cascade's layout noise followed by its hand-over noise
async function initialNoise(run) {
  const spec = model.spec, perImage = noiseSize();
  if (!run.noise) {
    const noise = new Float32Array(run.count * perImage);
    for (let i = 0; i < run.count; i++) noise.set(imageNoise(run.seed, i, perImage), i * perImage);
    return noise;
  }
  const url = new URL(run.noise, location.href);
  if (url.origin !== location.origin) throw new RangeError("noise must be a file on this server");
  const response = await fetch(url);
  if (!response.ok) throw new RangeError(`noise ${run.noise}: HTTP ${response.status}`);
  const bytes = await response.arrayBuffer();
  if (bytes.byteLength !== 4 * run.count * perImage) {
    throw new RangeError(`noise ${run.noise} holds ${bytes.byteLength} bytes, not ${run.count} images of ` +
                         `${spec.channels}x${spec.image_size}x${spec.image_size} float32` +
                         (layout ? ` after their layout noise (${pixels(layout)} float32)` : ""));
  }
  const view = new DataView(bytes), noise = new Float32Array(run.count * perImage);
  for (let j = 0; j < noise.length; j++) noise[j] = view.getFloat32(4 * j, true);  // little-endian on any CPU
  return noise;
}

const pixels = ({spec}) => spec.channels * spec.image_size * spec.image_size;
const noiseSize = () => pixels(model) + (layout ? pixels(layout) : 0);

const nextFrame = () => new Promise((resolve) => setTimeout(resolve, 0));  // lets the browser paint

async function generate(run) {
  setState("running");
  $("download").hidden = true;
  const spec = model.spec, imageSize = pixels(model), perImage = noiseSize();
  const noise = await initialNoise(run);
  const canvases = Array.from({length: run.count}, (_, i) => {
    const canvas = document.createElement("canvas");
    canvas.width = canvas.height = spec.image_size;
    if (run.labels !== null) canvas.title = classed.spec.classes[run.labels[i]];  // which species, on hovering
    return canvas;
  });
  $("images").replaceChildren(...canvases);
  const schedule = SCHEDULES[spec.schedule];
  const start = layout ? spec.layout.start : 1;
  const times = timesFrom(GRIDS[DEFAULT_GRID[run.sampler]](run.steps, schedule), start);
  const result = new Float32Array(run.count * imageSize);
  for (let first = 0; first < run.count; first += BATCH) {
    const batch = Math.min(BATCH, run.count - first);
    const shower = (stage, steps, upsample) => async (step, predImages) => {
      const images = upsample(denormalize(stage, predImages));
      for (let i = 0; i < batch; i++) draw(canvases[first + i], images.subarray(i * imageSize, (i + 1) * imageSize));
      say(`image ${first + 1}-${first + batch} of ${run.count}: ${stage === layout ? "layout " : ""}step ` +
          `${step + 1} of ${steps}`);
      await nextFrame();
    };
    const own = (part, size) => {  // each image's part of its noise: [offset, offset + size)
      const out = new Float32Array(batch * size);
      for (let i = 0; i < batch; i++) {
        const at = (first + i) * perImage + part;
        out.set(noise.subarray(at, at + size), i * size);
      }
      return out;
    };
    const chosen = run.labels === null ? null : run.labels.slice(first, first + batch);
    let x = own(perImage - imageSize, imageSize);
    if (layout) {  // corolla.portable.sampling.PortableModel._first_state
      const small = layout.spec.image_size, planes = batch * spec.channels;
      const up = (images) => upsampleBicubic(images, planes, small, spec.image_size);
      const layoutSchedule = SCHEDULES[layout.spec.schedule];
      const drawn = await SAMPLERS[run.sampler](
        denoiser(layout, batch, chosen, run.guidance, epsScale(layout, run.sampler)), layoutSchedule,
        own(0, pixels(layout)), GRIDS[DEFAULT_GRID[run.sampler]](run.steps, layoutSchedule),
        shower(layout, run.steps, up));
      x = noised(schedule, normalize(model, up(denormalize(layout, drawn))), x, start);
    }
    const images = await SAMPLERS[run.sampler](
      denoiser(model, batch, chosen, run.guidance, epsScale(model, run.sampler, start < 1)), schedule, x, times,
      shower(model, times.length - 1, (images) => images));
    result.set(denormalize(model, images), first * imageSize);
  }
  window.corollaImages = result;
  window.corollaLabels = run.labels;
  await offerDownload(canvases, run);
  say(`done: ${run.count} images, seed ${run.seed}, ${run.steps} steps, ${run.sampler}` +
      (run.labels === null ? "" : `, ${run.mix ? "every species at the data set's mix" : classed.spec.classes[run.labels[0]]}` +
       ` at guidance ${run.guidance}`));
  setState("done");
}

async function offerDownload(canvases, run) {  // the images side by side in rows of up to 8, as one PNG
  const size = model.spec.image_size, gap = 2, columns = Math.min(8, canvases.length);
  const grid = document.createElement("canvas");
  grid.width = columns * (size + gap) + gap;
  grid.height = Math.ceil(canvases.length / columns) * (size + gap) + gap;
  const context = grid.getContext("2d");
  context.fillStyle = "#fff";
  context.fillRect(0, 0, grid.width, grid.height);
  canvases.forEach((canvas, i) => {
    context.drawImage(canvas, gap + (i % columns) * (size + gap), gap + Math.floor(i / columns) * (size + gap));
  });
  const blob = await new Promise((resolve) => grid.toBlob(resolve, "image/png"));
  const link = $("download");
  if (link.href) URL.revokeObjectURL(link.href);
  link.href = URL.createObjectURL(blob);
  link.download = `corolla-seed${run.seed}-${run.sampler}-${run.steps}steps.png`;
  link.hidden = false;
}

async function attempt(work) {
  try {
    await work();
  } catch (error) {
    say(error instanceof RangeError ? error.message : `error: ${error.message || error}`, true);
    setState("error");
    return false;
  }
  return true;
}

function fromQuery(query) {  // the query's fields, shown in the form too
  const spec = classed.spec;
  const fields = {seed: query.get("seed") ?? "0", count: query.get("n") ?? "4", steps: query.get("steps") ?? "20",
                  sampler: query.get("sampler") ?? "ddim", label: query.get("class") ?? "",
                  mix: query.has("random-class"), guidance: query.get("guidance") ?? "", noise: query.get("noise")};
  $("seed").value = fields.seed;
  $("count").value = fields.count;
  $("steps").value = fields.steps;
  if (SAMPLERS[fields.sampler]) $("sampler").value = fields.sampler;
  if (spec.classes.includes(fields.label)) $("class").value = String(spec.classes.indexOf(fields.label));
  if (fields.mix && spec.class_mix?.length) $("class").value = MIX;
  if (fields.guidance) $("guidance").value = fields.guidance;
  return fields;
}

$("form").addEventListener("submit", (event) => {
  event.preventDefault();
  attempt(() => generate(settings(formFields())));
});

const loaded = await attempt(load);
if (loaded) {
  setState("ready");
  say("Ready.");
  const query = new URLSearchParams(location.search);
  if (query.has("seed") || query.has("n")) await attempt(() => generate(settings(fromQuery(query))));
}
