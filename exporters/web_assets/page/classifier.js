// The model side of the page: onnxruntime-web's wasm backend and the exported model, pixels in, probabilities out.
// It knows nothing of the page's elements, so the page's controls and the batch entry point that rtool's `browser`
// runtime calls (app.js) share every step from pixels to probabilities.
import * as ort from './ort/ort.wasm.min.mjs';

// One thread: multi-threaded wasm needs cross-origin isolation (COOP/COEP headers), which plain static hosts do
// not send; asking for more threads without them only falls back to one, with a warning.
ort.env.wasm.numThreads = 1;
ort.env.wasm.proxy = false;
ort.env.logLevel = 'error';

export const ORT_VERSION = ort.env.versions?.web ?? '';

function firstLine(error) {
  return String(error?.message ?? error).split('\n')[0].slice(0, 200);
}

async function fetchOk(url, what) {
  let response;
  try {
    response = await fetch(url, { cache: 'no-cache' });
  } catch (error) {
    throw new Error(`${what} ${url} could not be fetched (${firstLine(error)})`);
  }
  if (!response.ok) throw new Error(`${what} ${url} could not be fetched (HTTP ${response.status})`);
  return response;
}

// card.json: {"card": the model card, "models": {precision: file}, "onnxruntime_web": version}.
export async function loadCard(url) {
  const response = await fetchOk(url, 'the model card');
  let doc;
  try {
    doc = await response.json();
  } catch (error) {
    throw new Error(`${url} is not valid JSON`);
  }
  const input = doc?.card?.input;
  const usable = Array.isArray(doc?.card?.class_names) && input && [1, 3].includes(input.channels)
    && input.height > 0 && input.width > 0;
  if (!usable) throw new Error(`${url} holds no usable model card (class names and input size)`);
  return doc;
}

export async function loadModel(url) {
  const bytes = new Uint8Array(await (await fetchOk(url, 'the model')).arrayBuffer());
  try {
    return await ort.InferenceSession.create(bytes, { executionProviders: ['wasm'], graphOptimizationLevel: 'all' });
  } catch (error) {
    throw new Error(`${url} is not a model onnxruntime-web can run (${firstLine(error)})`);
  }
}

// RGBA from a canvas -> the model's pixels, one (height x width x channels) image. Grey takes Pillow's "L" weights
// and rounding (299/587/114 per mille in 16-bit fixed point), so a colour picture gets the grey levels rtool's
// Python path gives it.
export function pixelsFromRGBA(rgba, count, channels) {
  const out = new Uint8Array(count * channels);
  for (let i = 0, j = 0; i < count; i += 1, j += 4) {
    if (channels === 1) {
      out[i] = (rgba[j] * 19595 + rgba[j + 1] * 38470 + rgba[j + 2] * 7471 + 0x8000) >>> 16;
    } else {
      out[i * 3] = rgba[j];
      out[i * 3 + 1] = rgba[j + 1];
      out[i * 3 + 2] = rgba[j + 2];
    }
  }
  return out;
}

// count images (uint8, N x H x W x C) -> {probabilities: Float32Array (N x classes), ms: time of session.run}.
export async function classify(session, pixels, count, input) {
  const tensor = new ort.Tensor('uint8', pixels, [count, input.height, input.width, input.channels]);
  const began = performance.now();
  const outputs = await session.run({ [session.inputNames[0]]: tensor });
  const ms = performance.now() - began;
  return { probabilities: outputs[session.outputNames[0]].data, ms };
}

// The k most probable classes of the image whose probabilities start at `offset`.
export function topK(probabilities, classNames, k = 5, offset = 0) {
  const order = classNames.map((_, i) => i);
  order.sort((a, b) => probabilities[offset + b] - probabilities[offset + a] || a - b);
  return order.slice(0, k).map((i) => ({ index: i, name: classNames[i], probability: probabilities[offset + i] }));
}
