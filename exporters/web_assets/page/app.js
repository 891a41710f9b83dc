// The page: choose, drop or draw an image, see the top 5 classes and how long the model took.
// window.rtool.classifyPixels is the entry point rtool's `browser` runtime feeds test images through: the same
// model-input canvas, pixel reading and model call as a chosen image.
import { classify, loadCard, loadModel, ORT_VERSION, pixelsFromRGBA, topK } from './classifier.js';

const MODEL_FILES = /^model(\.int8)?\.onnx$/;
const TOP = 5;
const $ = (id) => document.getElementById(id);
const state = { doc: null, input: null, session: null, model: '' };

function showError(message) {
  const box = $('error');
  box.textContent = message;
  box.hidden = false;
  $('status').textContent = 'The model is not loaded.';
}

function chooseModel(models) {
  const asked = new URLSearchParams(location.search).get('model');
  if (asked && MODEL_FILES.test(asked)) return asked;
  return Object.values(models).find((name) => MODEL_FILES.test(name)) || 'model.onnx';
}

function setUpModelSelect(models) {
  const entries = Object.entries(models).filter(([, file]) => MODEL_FILES.test(file));
  if (entries.length < 2) return;
  const select = $('model-select');
  for (const [precision, file] of entries) select.add(new Option(`${precision.toUpperCase()} (${file})`, file));
  select.value = state.model;
  select.hidden = $('model-label').hidden = false;
  select.addEventListener('change', () => {
    location.search = `?model=${encodeURIComponent(select.value)}`;
  });
}

async function start() {
  try {
    state.doc = await loadCard('card.json');
    const { card } = state.doc;
    state.input = card.input;
    state.model = chooseModel(state.doc.models || {});
    $('title').textContent = `${card.model}: ${card.class_names.length} classes`;
    $('model-input').width = card.input.width;
    $('model-input').height = card.input.height;
    $('draw-area').hidden = !(card.input.channels === 1 && card.input.height === 28 && card.input.width === 28);
    setUpModelSelect(state.doc.models || {});
    state.session = await loadModel(state.model);
    $('status').textContent = `Ready: ${state.model} in onnxruntime-web ${ORT_VERSION} (wasm, one thread). `
      + 'Choose, drop or draw an image.';
    $('about').textContent = `Images are resized to ${card.input.width}x${card.input.height}`
      + `${card.input.channels === 1 ? ' grey' : ' RGB'} and classified on this device; nothing is uploaded.`;
    return state.model;
  } catch (error) {
    showError(`The model could not be loaded: ${error.message}. Re-export this folder with `
      + '"rtool export CHECKPOINT --format web" and serve it over HTTP ("rtool web serve FOLDER"); '
      + 'a page opened as a file cannot load it.');
    throw error;
  }
}

const ready = start(); // resolves to the model file loaded
ready.catch(() => {}); // shown on the page; window.rtool.ready still rejects for callers

function context2d(canvas) {
  return canvas.getContext('2d', { willReadFrequently: true });
}

function readModelInput() {
  const canvas = $('model-input');
  const { data } = context2d(canvas).getImageData(0, 0, canvas.width, canvas.height);
  return pixelsFromRGBA(data, canvas.width * canvas.height, state.input.channels);
}

function showPreview() {
  const preview = $('preview');
  const ctx = preview.getContext('2d');
  ctx.imageSmoothingEnabled = false;
  ctx.drawImage($('model-input'), 0, 0, preview.width, preview.height);
}

function render(top, ms) {
  const list = $('results');
  list.replaceChildren();
  for (const { name, probability } of top) {
    const percent = (100 * probability).toFixed(1);
    const item = document.createElement('li');
    item.setAttribute('aria-label', `${name}: ${percent} percent`);
    const label = Object.assign(document.createElement('span'), { className: 'name', textContent: name, title: name });
    const bar = Object.assign(document.createElement('div'), { className: 'bar' });
    const fill = Object.assign(document.createElement('div'), { className: 'fill' });
    fill.style.width = `${percent}%`;
    bar.append(fill);
    item.append(label, bar, Object.assign(document.createElement('span'), { className: 'pct', textContent: `${percent}%` }));
    list.append(item);
  }
  $('latency').textContent = `${ms.toFixed(1)} ms in the model (onnxruntime-web, wasm)`;
}

// The model-input canvas holds the image at the model's size: read it, classify it, show the top 5.
async function classifyModelInput() {
  await ready;
  const pixels = readModelInput();
  showPreview();
  const { probabilities, ms } = await classify(state.session, pixels, 1, state.input);
  const top = topK(probabilities, state.doc.card.class_names, TOP);
  render(top, ms);
  $('status').textContent = `Top class: ${top[0].name} (${(100 * top[0].probability).toFixed(1)}%).`;
  return { top, ms };
}

// Draw `source` (an image or a region of a canvas) onto the model-input canvas, resized to the model's size.
function drawModelInput(source, region) {
  const canvas = $('model-input');
  const ctx = context2d(canvas);
  ctx.imageSmoothingEnabled = true;
  ctx.imageSmoothingQuality = 'high';
  ctx.fillStyle = '#000';
  ctx.fillRect(0, 0, canvas.width, canvas.height);
  if (region) ctx.drawImage(source, ...region.from, ...region.to);
  else ctx.drawImage(source, 0, 0, canvas.width, canvas.height);
}

async function classifyFile(file) {
  if (!file) return;
  let image;
  try {
    image = await createImageBitmap(file);
  } catch (error) {
    $('status').textContent = `${file.name} is not an image this browser can read.`;
    return;
  }
  await ready;
  drawModelInput(image);
  image.close();
  await classifyModelInput();
}

// ---- batches for rtool's `browser` runtime: uint8 N x H x W x C in, float32 probabilities out, both base64

function fromBase64(text) {
  const binary = atob(text);
  const bytes = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i += 1) bytes[i] = binary.charCodeAt(i);
  return bytes;
}

function toBase64(bytes) {
  let binary = '';
  for (let i = 0; i < bytes.length; i += 0x8000) binary += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  return btoa(binary);
}

// One image's pixels onto the model-input canvas (as an opaque RGBA picture, so reading it back is exact).
function putPixels(pixels) {
  const { height, width, channels } = state.input;
  const image = new ImageData(width, height);
  const rgba = image.data;
  for (let i = 0, p = 0, q = 0; i < height * width; i += 1, p += channels, q += 4) {
    rgba[q] = pixels[p];
    rgba[q + 1] = pixels[channels === 1 ? p : p + 1];
    rgba[q + 2] = pixels[channels === 1 ? p : p + 2];
    rgba[q + 3] = 255;
  }
  context2d($('model-input')).putImageData(image, 0, 0);
}

async function classifyPixels(base64, count) {
  await ready;
  const { height, width, channels } = state.input;
  const size = height * width * channels;
  const raw = fromBase64(base64);
  if (raw.length !== count * size) throw new Error(`expected ${count} images of ${size} bytes, got ${raw.length} bytes`);
  const pixels = new Uint8Array(raw.length);
  for (let n = 0; n < count; n += 1) {
    putPixels(raw.subarray(n * size, (n + 1) * size));
    pixels.set(readModelInput(), n * size);
  }
  const { probabilities, ms } = await classify(state.session, pixels, count, state.input);
  return { probabilities: toBase64(new Uint8Array(probabilities.buffer, probabilities.byteOffset, probabilities.byteLength)), ms };
}

// One image shown and classified as if the user had chosen it (for screenshots).
async function showPixels(base64) {
  await ready;
  putPixels(fromBase64(base64));
  return classifyModelInput();
}

window.rtool = { ready, classifyPixels, showPixels, ortVersion: ORT_VERSION };

// ---- controls

$('file').addEventListener('change', (event) => classifyFile(event.target.files[0]));
const drop = $('drop');
drop.addEventListener('keydown', (event) => {
  if (event.key === 'Enter' || event.key === ' ') {
    event.preventDefault();
    $('file').click();
  }
});
drop.addEventListener('click', () => $('file').click());
drop.addEventListener('dragover', (event) => {
  event.preventDefault();
  drop.classList.add('over');
});
drop.addEventListener('dragleave', () => drop.classList.remove('over'));
drop.addEventListener('drop', (event) => {
  event.preventDefault();
  drop.classList.remove('over');
  classifyFile(event.dataTransfer.files[0]);
});

// ---- drawing a digit (1-channel 28x28 models): white strokes on black, framed as MNIST frames its digits

const draw = $('draw');
const pen = draw.getContext('2d', { willReadFrequently: true });
let drawing = false;

function clearDrawing() {
  pen.fillStyle = '#000';
  pen.fillRect(0, 0, draw.width, draw.height);
}

function point(event) {
  const box = draw.getBoundingClientRect();
  return [(event.clientX - box.left) * (draw.width / box.width), (event.clientY - box.top) * (draw.height / box.height)];
}

// The drawn strokes' bounding box, scaled so its longer side fills 20 of the 28 pixels and centred (MNIST's frame).
function drawingRegion() {
  const { data } = pen.getImageData(0, 0, draw.width, draw.height);
  let [left, top, right, bottom] = [draw.width, draw.height, -1, -1];
  for (let y = 0; y < draw.height; y += 1) {
    for (let x = 0; x < draw.width; x += 1) {
      if (data[(y * draw.width + x) * 4] > 0) {
        left = Math.min(left, x); right = Math.max(right, x); top = Math.min(top, y); bottom = Math.max(bottom, y);
      }
    }
  }
  if (right < 0) return null;
  const [w, h] = [right - left + 1, bottom - top + 1];
  const scale = 20 / Math.max(w, h);
  const [dw, dh] = [w * scale, h * scale];
  return { from: [left, top, w, h], to: [(28 - dw) / 2, (28 - dh) / 2, dw, dh] };
}

async function classifyDrawing() {
  const region = drawingRegion();
  if (!region) {
    $('status').textContent = 'Draw a digit first.';
    return;
  }
  await ready;
  drawModelInput(draw, region);
  await classifyModelInput();
}

clearDrawing();
draw.addEventListener('pointerdown', (event) => {
  drawing = true;
  draw.setPointerCapture(event.pointerId);
  pen.strokeStyle = '#fff';
  pen.lineWidth = 20;
  pen.lineCap = pen.lineJoin = 'round';
  pen.beginPath();
  pen.moveTo(...point(event));
});
draw.addEventListener('pointermove', (event) => {
  if (!drawing) return;
  pen.lineTo(...point(event));
  pen.stroke();
});
draw.addEventListener('pointerup', () => {
  drawing = false;
  classifyDrawing();
});
$('draw-classify').addEventListener('click', classifyDrawing);
$('draw-clear').addEventListener('click', () => {
  clearDrawing();
  $('results').replaceChildren();
  $('latency').textContent = '';
});
