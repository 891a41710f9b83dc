#!/usr/bin/env node
// Classify PNG and JPEG images with an rtool ONNX file in Node.js, using onnxruntime-node.
//
//   npm install --onnxruntime-node-install=skip
//   node classify.js ../../export/model.onnx seven.png photo.jpg --top-k 3 [--json]
//
// Everything the app needs comes from the model card that `rtool export` writes
// into the file's metadata_props (docs/onnx-metadata.md). onnxruntime-node does
// not expose custom metadata, so this script decodes that one field of the ONNX
// protobuf itself. Preprocessing repeats Pillow's steps (a JPEG's EXIF orientation, colour conversion,
// bilinear resize, the centre crop of cards that say resize: center_crop,
// (pixels / 255 - mean) / std in float32): a PNG reaches the
// model as the same numbers as in Python; a JPEG within a few levels of them
// (jpeg-js's IDCT is not libjpeg's; figures in docs/embedding.md).
'use strict';

const fs = require('fs');
const ort = require('onnxruntime-node');
const protobuf = require('protobufjs');
const jpeg = require('jpeg-js');
const { PNG } = require('pngjs');

const CARD_KEY = 'rtool.model_card';
const SUPPORTED_CARD_FORMAT = 2; // 2 added input.resize (stretch | center_crop) and input.resize_size
const MAX_IMAGE_PIXELS = 89478485; // Pillow's decompression-bomb limit (PIL.Image.MAX_IMAGE_PIXELS)

// Only the fields read here, with their numbers from onnx.proto
// (ModelProto.metadata_props = 14; StringStringEntryProto.key = 1, .value = 2).
// protobufjs skips every other field, the graph and its weights included.
const onnxSchema = protobuf.Root.fromJSON({
  nested: {
    ModelProto: { fields: { metadata_props: { rule: 'repeated', type: 'StringStringEntryProto', id: 14 } } },
    StringStringEntryProto: { fields: { key: { type: 'string', id: 1 }, value: { type: 'string', id: 2 } } },
  },
});
const ModelProto = onnxSchema.lookupType('ModelProto');

class ClassifyError extends Error {}

/** The model card stored in an ONNX file's metadata_props, checked for what this script reads. */
function readCard(modelBytes, source) {
  let props;
  try {
    props = ModelProto.decode(modelBytes).metadata_props;
  } catch (e) {
    throw new ClassifyError(`${source} is not a readable ONNX file (${e.message})`);
  }
  const entry = props.find((p) => p.key === CARD_KEY);
  if (!entry) {
    throw new ClassifyError(`${source} has no rtool model card (metadata key '${CARD_KEY}'); `
      + 'export it with `rtool export`');
  }
  let card;
  try {
    card = JSON.parse(entry.value);
  } catch (e) {
    throw new ClassifyError(`${source}: the model card is not valid JSON; re-export the model with rtool`);
  }
  if ((card.format_version || 0) > SUPPORTED_CARD_FORMAT) {
    throw new ClassifyError(`${source}: model card format ${card.format_version} is newer than this script `
      + `understands (${SUPPORTED_CARD_FORMAT})`);
  }
  const spec = card.input || {};
  const perChannel = (v) => Array.isArray(v) && v.length === spec.channels;
  const resize = spec.resize || 'stretch';
  const cropFits = resize === 'stretch' || spec.resize_size >= Math.max(spec.height, spec.width);
  if (!Array.isArray(card.class_names) || !spec.channels || !spec.height || !spec.width
      || !perChannel(spec.mean) || !perChannel(spec.std) || !['stretch', 'center_crop'].includes(resize)
      || !cropFits) {
    throw new ClassifyError(`${source}: the model card is malformed; re-export the model with rtool`);
  }
  return card;
}

/** RGB or grey samples, `channels` per pixel -> the card's colour mode ("L" or "RGB"), as Pillow converts. */
function toColor(width, height, channels, data, color) {
  const outChannels = color === 'L' ? 1 : 3;
  const out = new Uint8Array(width * height * outChannels);
  for (let i = 0; i < width * height; i++) {
    const r = data[channels * i], g = data[channels * i + 1], b = data[channels * i + 2];
    if (outChannels === 1) {
      out[i] = (r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16; // Pillow's RGB -> L (ITU-R 601-2 luma)
    } else {
      out[3 * i] = r; out[3 * i + 1] = g; out[3 * i + 2] = b;
    }
  }
  return { width, height, channels: outChannels, data: out };
}

/** Refuse, before decoding, a picture above Pillow's decompression-bomb limit (as onnx_app.py does). */
function checkPixels(path, width, height) {
  if (width * height > MAX_IMAGE_PIXELS) {
    throw new ClassifyError(`image ${path} is ${width}x${height} pixels, more than the ${MAX_IMAGE_PIXELS} `
      + 'this example decodes (Pillow\'s decompression-bomb limit); shrink it');
  }
}

/** PNG bytes -> {width, height, channels, data: Uint8Array (H, W, C)} in the card's colour mode. */
function loadPng(bytes, path, color) {
  if (bytes.length >= 24) checkPixels(path, bytes.readUInt32BE(16), bytes.readUInt32BE(20)); // IHDR
  let png;
  try {
    png = PNG.sync.read(bytes);
  } catch (e) {
    throw new ClassifyError(`cannot read image ${path} (${e.message}); this example reads PNG and JPEG files`);
  }
  if (png.depth === 16) throw new ClassifyError(`${path} is a 16-bit PNG; save it with 8 bits per channel`);
  return toColor(png.width, png.height, 4, png.data, color); // RGBA, 8 bits, palettes and grey already expanded
}

// ---- JPEG: jpeg-js decodes each component (the IDCT); this file repeats what libjpeg-turbo, Pillow's
// decoder, does next: "fancy" chroma upsampling and fixed-point YCbCr -> RGB.

/** The frame's size and sampling factors, and whether libjpeg reads its three components as YCbCr. */
function jpegLayout(bytes) {
  let offset = 2, frame = null, adobeTransform = null, jfif = false;
  while (offset + 4 <= bytes.length && bytes[offset] === 0xff) {
    const marker = bytes[offset + 1];
    if (marker === 0xff) { offset += 1; continue; } // fill byte
    if (marker === 0xda || marker === 0xd9) break; // start of scan (or end): every header is read
    const length = bytes.readUInt16BE(offset + 2), body = offset + 4;
    if (marker >= 0xc0 && marker <= 0xcf && ![0xc4, 0xc8, 0xcc].includes(marker) && body + 6 <= bytes.length) {
      const components = [];
      for (let i = 0; i < bytes[body + 5] && body + 8 + 3 * i <= bytes.length; i++) {
        const factors = bytes[body + 7 + 3 * i];
        components.push({ id: bytes[body + 6 + 3 * i], h: factors >> 4, v: factors & 15 });
      }
      frame = { height: bytes.readUInt16BE(body + 1), width: bytes.readUInt16BE(body + 3), components };
    } else if (marker === 0xe0 && bytes.toString('latin1', body, body + 5) === 'JFIF\0') {
      jfif = true;
    } else if (marker === 0xee && bytes.toString('latin1', body, body + 5) === 'Adobe' && length >= 12) {
      adobeTransform = bytes[body + 11];
    }
    offset += 2 + length;
  }
  if (!frame) return null;
  // libjpeg (jdapimin.c): JFIF means YCbCr; else Adobe's transform flag; else ids 'R','G','B' mean RGB.
  const rgbIds = frame.components.map((c) => c.id).join() === '82,71,66';
  return { ...frame, adobeTransform, ycc: jfif || (adobeTransform !== null ? adobeTransform !== 0 : !rgbIds) };
}

/** One chroma component at full size, upsampled as libjpeg-turbo does by default (jdsample.c): a triangle
 * filter for 2x across (h2v1, h2v2: when wider than 2 samples) and 2x down (h1v2); else replication, which
 * is what jpeg-js returns (null). Its own samples are read back from jpeg-js's replicated output. */
function fancyUpsample(full, channel, width, height, rx, ry) {
  const dw = Math.ceil(width / rx), dh = Math.ceil(height / ry);
  const across = rx === 2 && dw > 2;
  if (!((across && ry <= 2) || (rx === 1 && ry === 2))) return null;
  const at = (x, y) => full[(y * ry * width + x * rx) * 3 + channel];
  const out = new Uint8Array(width * height);
  const put = (x, y, value) => { if (x < width && y < height) out[y * width + x] = value; };
  for (let y = 0; y < dh; y++) {
    for (let v = 0; v < ry; v++) {
      const near = v === 0 ? Math.max(y - 1, 0) : Math.min(y + 1, dh - 1); // edge rows repeat
      const sum = (x) => (ry === 2 ? 3 * at(x, y) + at(x, near) : at(x, y)); // vertical 3/4 + 1/4, or none
      const [biasLeft, biasRight, shift] = ry === 2 ? [8, 7, 4] : [1, 2, 2]; // libjpeg's rounding per case
      const row = y * ry + v;
      for (let x = 0; x < dw; x++) {
        if (!across) { put(x, row, (sum(x) + 1 + v) >> 2); continue; } // h1v2: bias 1 up, 2 down
        const here = 3 * sum(x), left = sum(Math.max(x - 1, 0)), right = sum(Math.min(x + 1, dw - 1));
        put(2 * x, row, (here + left + biasLeft) >> shift);
        put(2 * x + 1, row, (here + right + biasRight) >> shift);
      }
    }
  }
  return out;
}

const FIX = (x) => Math.round(x * 65536); // libjpeg's 16-bit fixed point (jdcolor.c)

/** JPEG bytes -> {width, height, channels, data} in the card's colour mode, within a few levels of Pillow. */
function loadJpeg(bytes, path, color) {
  const layout = jpegLayout(bytes);
  if (layout) checkPixels(path, layout.width, layout.height);
  if (layout && layout.components.length === 4) {
    throw new ClassifyError(`${path} is a CMYK JPEG; save it as RGB (this example reads grey and RGB JPEGs)`);
  }
  let img;
  try {
    img = jpeg.decode(bytes, { useTArray: true, formatAsRGBA: false, colorTransform: false,
      maxResolutionInMP: MAX_IMAGE_PIXELS / 1e6, maxMemoryUsageInMB: 2048 });
  } catch (e) {
    throw new ClassifyError(`cannot read image ${path} (${e.message}); this example reads PNG and JPEG files`);
  }
  const { width, height, data } = img;
  const orientation = exifOrientation(img.exifBuffer);
  // jpeg-js converts Adobe-flagged YCbCr itself (already RGB here); grey arrives as three equal channels.
  if (!layout || layout.components.length !== 3 || !layout.ycc || layout.adobeTransform) {
    return orient(toColor(width, height, 3, data, color), orientation);
  }
  const maxH = Math.max(...layout.components.map((c) => c.h)), maxV = Math.max(...layout.components.map((c) => c.v));
  const [cb, cr] = [1, 2].map((k) => fancyUpsample(data, k, width, height, maxH / layout.components[k].h,
    maxV / layout.components[k].v));
  const rgb = new Uint8Array(width * height * 3);
  const clamp = (value) => (value < 0 ? 0 : value > 255 ? 255 : value);
  for (let i = 0; i < width * height; i++) {
    const y = data[3 * i], u = (cb ? cb[i] : data[3 * i + 1]) - 128, w = (cr ? cr[i] : data[3 * i + 2]) - 128;
    rgb[3 * i] = clamp(y + ((FIX(1.402) * w + 32768) >> 16));
    rgb[3 * i + 1] = clamp(y + ((-FIX(0.34414) * u + 32768 - FIX(0.71414) * w) >> 16));
    rgb[3 * i + 2] = clamp(y + ((FIX(1.772) * u + 32768) >> 16));
  }
  return orient(toColor(width, height, 3, rgb, color), orientation);
}

/** The EXIF orientation (1-8) in a JPEG's APP1 Exif segment (jpeg-js hands it over from its padding byte on),
 * or 1 when there is none or it cannot be read. */
function exifOrientation(exif) {
  if (!exif) return 1;
  const buf = Buffer.from(exif.buffer, exif.byteOffset, exif.byteLength);
  const t = buf[0] === 0 ? 1 : 0; // the TIFF header follows "Exif\0\0"
  if (buf.length < t + 8) return 1;
  const little = buf.toString('latin1', t, t + 2) === 'II';
  const u16 = (at) => (little ? buf.readUInt16LE(at) : buf.readUInt16BE(at));
  const u32 = (at) => (little ? buf.readUInt32LE(at) : buf.readUInt32BE(at));
  const ifd = t + u32(t + 4);
  if (ifd + 2 > buf.length) return 1;
  for (let k = 0, n = u16(ifd); k < n && ifd + 2 + 12 * k + 12 <= buf.length; k++) {
    const entry = ifd + 2 + 12 * k;
    if (u16(entry) === 0x0112) {
      const value = u16(entry + 8);
      return value >= 1 && value <= 8 ? value : 1;
    }
  }
  return 1;
}

/** An image turned upright as its EXIF orientation says (Pillow's ImageOps.exif_transpose, as rtool does). */
function orient(img, orientation) {
  if (orientation === 1) return img;
  const { width: w, height: h, channels: c, data } = img;
  const swap = orientation >= 5;
  const [ow, oh] = swap ? [h, w] : [w, h];
  // output (x, y) <- source (sx, sy), per orientation (2 mirror, 3 rotate 180, 4 flip, 5 transpose,
  // 6 rotate 90 clockwise, 7 transverse, 8 rotate 90 anticlockwise)
  const source = {
    2: (x, y) => [w - 1 - x, y], 3: (x, y) => [w - 1 - x, h - 1 - y], 4: (x, y) => [x, h - 1 - y],
    5: (x, y) => [y, x], 6: (x, y) => [y, h - 1 - x], 7: (x, y) => [w - 1 - y, h - 1 - x], 8: (x, y) => [w - 1 - y, x],
  }[orientation];
  const out = new Uint8Array(ow * oh * c);
  for (let y = 0; y < oh; y++) {
    for (let x = 0; x < ow; x++) {
      const [sx, sy] = source(x, y);
      for (let k = 0; k < c; k++) out[(y * ow + x) * c + k] = data[(sy * w + sx) * c + k];
    }
  }
  return { width: ow, height: oh, channels: c, data: out };
}

/** An image file (PNG or JPEG, told by its first bytes) in the card's colour mode. */
function loadImage(path, color) {
  let bytes;
  try {
    bytes = fs.readFileSync(path);
  } catch (e) {
    throw new ClassifyError(`cannot read image ${path} (${e.code || e.message})`);
  }
  if (bytes[0] === 0xff && bytes[1] === 0xd8) return loadJpeg(bytes, path, color);
  return loadPng(bytes, path, color);
}

// Pillow's bilinear resampling (libImaging/Resample.c): a triangle filter widened
// by the scale when shrinking, 22-bit fixed-point weights, one pass per axis.
const PRECISION_BITS = 32 - 8 - 2;

function resampleWeights(inSize, outSize) {
  const scale = inSize / outSize;
  const filterScale = Math.max(scale, 1.0);
  const support = 1.0 * filterScale;
  const bounds = [];
  for (let xx = 0; xx < outSize; xx++) {
    const center = (xx + 0.5) * scale;
    const xmin = Math.max(Math.trunc(center - support + 0.5), 0);
    const xmax = Math.min(Math.trunc(center + support + 0.5), inSize) - xmin;
    const w = [];
    let total = 0;
    for (let x = 0; x < xmax; x++) {
      const t = Math.abs((x + xmin - center + 0.5) * (1.0 / filterScale));
      const v = t < 1.0 ? 1.0 - t : 0.0;
      w.push(v);
      total += v;
    }
    const fixed = w.map((v) => {
      const k = (total !== 0 ? v / total : v) * (1 << PRECISION_BITS);
      return k < 0 ? Math.trunc(k - 0.5) : Math.trunc(k + 0.5);
    });
    bounds.push({ xmin, weights: fixed });
  }
  return bounds;
}

function clip8(sum) {
  return Math.min(255, Math.max(0, Math.floor(sum / (1 << PRECISION_BITS))));
}

function resizeRows(img, outW) {
  const { width, height, channels, data } = img;
  const taps = resampleWeights(width, outW);
  const out = new Uint8Array(outW * height * channels);
  for (let y = 0; y < height; y++) {
    for (let xx = 0; xx < outW; xx++) {
      const { xmin, weights } = taps[xx];
      for (let c = 0; c < channels; c++) {
        let sum = 1 << (PRECISION_BITS - 1);
        for (let k = 0; k < weights.length; k++) sum += data[(y * width + xmin + k) * channels + c] * weights[k];
        out[(y * outW + xx) * channels + c] = clip8(sum);
      }
    }
  }
  return { width: outW, height, channels, data: out };
}

function resizeColumns(img, outH) {
  const { width, height, channels, data } = img;
  const taps = resampleWeights(height, outH);
  const out = new Uint8Array(width * outH * channels);
  for (let yy = 0; yy < outH; yy++) {
    const { xmin: ymin, weights } = taps[yy];
    for (let x = 0; x < width; x++) {
      for (let c = 0; c < channels; c++) {
        let sum = 1 << (PRECISION_BITS - 1);
        for (let k = 0; k < weights.length; k++) sum += data[((ymin + k) * width + x) * channels + c] * weights[k];
        out[(yy * width + x) * channels + c] = clip8(sum);
      }
    }
  }
  return { width, height: outH, channels, data: out };
}

function resizeBilinear(img, outW, outH) {
  // Pillow 13 runs the vertical pass first when the height shrinks by more than twice
  // what the width does; the order changes the rounding between the passes.
  const shrinkH = img.height - outH;
  const verticalFirst = shrinkH > 0 && shrinkH > (img.width - outW) * 2;
  let out = img;
  if (verticalFirst && outH !== out.height) out = resizeColumns(out, outH);
  if (outW !== out.width) out = resizeRows(out, outW);
  if (outH !== out.height) out = resizeColumns(out, outH);
  return out;
}

/** The size an image is resized to before any crop: the input size itself (stretch), or torchvision's
 * Resize(resize_size) for center_crop (the shorter side becomes resize_size, the longer
 * trunc(resize_size * longer / shorter), in the same float64 arithmetic as Python). */
function resizedSize(width, height, spec) {
  if ((spec.resize || 'stretch') === 'stretch') return [spec.width, spec.height];
  const short = Math.min(width, height), long = Math.max(width, height);
  const newLong = Math.trunc(spec.resize_size * long / short);
  return width <= height ? [spec.resize_size, newLong] : [newLong, spec.resize_size];
}

/** Python's round(n / 2) for a whole n >= 0: a half goes to the even neighbour (torchvision's CenterCrop). */
function halfRoundedEven(n) {
  if (n % 2 === 0) return n / 2;
  const down = (n - 1) / 2;
  return down % 2 === 0 ? down : down + 1;
}

/** The centre width x height of an image, anchored as torchvision's CenterCrop anchors it. */
function centerCrop(img, width, height) {
  const left = halfRoundedEven(img.width - width), top = halfRoundedEven(img.height - height);
  const { channels, data } = img;
  const out = new Uint8Array(width * height * channels);
  for (let y = 0; y < height; y++) {
    const start = ((top + y) * img.width + left) * channels;
    out.set(data.subarray(start, start + width * channels), y * width * channels);
  }
  return { width, height, channels, data: out };
}

/** Images (H, W, C) at the card's size -> the ort.Tensor the graph takes. */
function toModelInput(images, card) {
  const spec = card.input;
  const { channels: C, height: H, width: W } = spec;
  const n = images.length;
  if (spec.dtype === 'uint8') { // preprocessing is inside the graph: raw pixels
    const raw = new Uint8Array(n * H * W * C);
    images.forEach((img, i) => raw.set(img.data, i * H * W * C));
    if (spec.layout !== 'NHWC') throw new ClassifyError(`unsupported raw input layout ${spec.layout}`);
    return new ort.Tensor('uint8', raw, [n, H, W, C]);
  }
  const divisor = Math.fround(1 / (spec.scale || 1 / 255));
  const mean = spec.mean.map(Math.fround);
  const std = spec.std.map(Math.fround);
  const x = new Float32Array(n * C * H * W);
  images.forEach((img, i) => {
    for (let c = 0; c < C; c++) {
      for (let p = 0; p < H * W; p++) {
        const scaled = Math.fround(img.data[p * C + c] / divisor);
        x[((i * C + c) * H * W) + p] = Math.fround(Math.fround(scaled - mean[c]) / std[c]);
      }
    }
  });
  return new ort.Tensor('float32', x, [n, C, H, W]);
}

/** Read, convert, resize and (center_crop) crop each image as the card says. */
function preprocess(paths, card) {
  const spec = card.input;
  const color = spec.color || (spec.channels === 1 ? 'L' : 'RGB');
  return paths.map((p) => {
    let img = loadImage(p, color);
    const [w, h] = resizedSize(img.width, img.height, spec);
    if (img.width !== w || img.height !== h) img = resizeBilinear(img, w, h);
    return img.width === spec.width && img.height === spec.height ? img : centerCrop(img, spec.width, spec.height);
  });
}

function softmax(row) {
  const max = Math.max(...row);
  const exps = row.map((v) => Math.exp(v - max));
  const total = exps.reduce((a, b) => a + b, 0);
  return exps.map((v) => v / total);
}

/** Classify PNG and JPEG files: for each, its topK {class, probability} pairs, most likely first. */
async function classify(modelPath, imagePaths, topK = 1) {
  let bytes;
  try {
    bytes = fs.readFileSync(modelPath);
  } catch (e) {
    throw new ClassifyError(`model file ${modelPath} cannot be read (${e.code || e.message})`);
  }
  const card = readCard(bytes, modelPath);
  const session = await ort.InferenceSession.create(bytes);
  const wanted = card.input.dtype === 'uint8' ? 'uint8' : 'float32';
  const graphInput = session.inputMetadata ? session.inputMetadata[0] : null;
  if (graphInput && graphInput.type !== wanted) {
    throw new ClassifyError(`${modelPath}: the card says the input is ${wanted} `
      + `but the graph takes ${graphInput.type}`);
  }
  const input = toModelInput(preprocess(imagePaths, card), card);
  const output = (await session.run({ [session.inputNames[0]]: input }))[session.outputNames[0]];
  const classes = output.dims[1];
  const k = Math.max(1, Math.min(topK, classes));
  return imagePaths.map((image, i) => {
    const scores = Array.from(output.data.slice(i * classes, (i + 1) * classes));
    const probs = card.output === 'probabilities' ? scores : softmax(scores);
    const order = probs.map((p, j) => j).sort((a, b) => probs[b] - probs[a] || a - b).slice(0, k);
    return { image, predictions: order.map((j) => ({ class: card.class_names[j], probability: probs[j] })) };
  });
}

async function main(argv) {
  const args = argv.slice(2);
  const json = args.includes('--json');
  let topK = 1;
  const positional = [];
  for (let i = 0; i < args.length; i++) {
    if (args[i] === '--json') continue;
    if (args[i] === '--top-k') { topK = parseInt(args[++i], 10); continue; }
    positional.push(args[i]);
  }
  if (positional.length < 2 || !(topK >= 1)) {
    console.error('usage: node classify.js MODEL.onnx IMAGE.png|IMAGE.jpg... [--top-k K] [--json]');
    return 2;
  }
  const [model, ...images] = positional;
  try {
    const results = await classify(model, images, topK);
    if (json) {
      console.log(JSON.stringify(results, null, 2));
    } else {
      for (const r of results) {
        console.log(`${r.image}: ` + r.predictions.map((p) => `${p.class} (${p.probability.toFixed(4)})`).join(', '));
      }
    }
    return 0;
  } catch (e) {
    if (!(e instanceof ClassifyError)) throw e;
    console.error(`classify: error: ${e.message}`);
    return 2;
  }
}

module.exports = {
  readCard, loadImage, loadPng, loadJpeg, resizeBilinear, resizedSize, centerCrop, preprocess, toModelInput, classify,
};

if (require.main === module) {
  main(process.argv).then((code) => { process.exitCode = code; });
}
