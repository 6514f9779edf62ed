// The processed target as the core makes it (backend/nca/target.py), computed in the browser so
// the user sees it before uploading: optional background keying, thumbnail to `size` keeping the
// aspect ratio (never enlarging), premultiplied alpha, `padding` empty cells on every side.
// The server's GET /api/jobs/{id}/target.png stays the source of truth once a job exists.

const KEY_TOLERANCE = 24; // per-channel distance (0-255) from the border colour that is keyed out
const KEY_WORK_SIDE = 1024; // keying runs on a copy at most this big: a preview, not the real thing

/** Pillow's Image.thumbnail size: fit in size x size, keep the aspect ratio, never enlarge. */
export function thumbnailSize(width, height, size) {
  if (width <= size && height <= size) return [width, height];
  const aspect = width / height;
  const roundAspect = (n, error) => Math.max(
    [Math.floor(n), Math.ceil(n)].reduce((best, v) => (error(v) < error(best) ? v : best)), 1);
  if (1 >= aspect) {
    return [roundAspect(size * aspect, (n) => Math.abs(aspect - n / size)), size];
  }
  return [size, roundAspect(size / aspect, (n) => (n === 0 ? 0 : Math.abs(aspect - size / n)))];
}

function drawScaled(source, width, height) {
  const canvas = document.createElement('canvas');
  canvas.width = width;
  canvas.height = height;
  const ctx = canvas.getContext('2d', { willReadFrequently: true });
  ctx.imageSmoothingEnabled = true;
  ctx.imageSmoothingQuality = 'high';
  ctx.drawImage(source, 0, 0, width, height);
  return canvas;
}

/** Make pixels close to the most common border colour transparent (mirrors key_out_background). */
function keyOutBackground(canvas) {
  const ctx = canvas.getContext('2d', { willReadFrequently: true });
  const { width: w, height: h } = canvas;
  const image = ctx.getImageData(0, 0, w, h);
  const px = image.data;
  const counts = new Map();
  const countAt = (x, y) => {
    const i = (y * w + x) * 4;
    const key = (px[i] << 16) | (px[i + 1] << 8) | px[i + 2];
    counts.set(key, (counts.get(key) || 0) + 1);
  };
  for (let x = 0; x < w; x++) { countAt(x, 0); countAt(x, h - 1); }
  for (let y = 0; y < h; y++) { countAt(0, y); countAt(w - 1, y); }
  let background = 0;
  let best = -1;
  for (const [key, n] of counts) if (n > best) { best = n; background = key; }
  const bg = [(background >> 16) & 255, (background >> 8) & 255, background & 255];
  for (let i = 0; i < px.length; i += 4) {
    const d = Math.max(Math.abs(px[i] - bg[0]), Math.abs(px[i + 1] - bg[1]), Math.abs(px[i + 2] - bg[2]));
    if (d <= KEY_TOLERANCE) px[i + 3] = 0;
  }
  ctx.putImageData(image, 0, 0);
  return canvas;
}

/**
 * Build the target from a decoded image (an ImageBitmap or <img>).
 * Returns {rgba: Float32Array (premultiplied, H*W*4, values 0..1), width, height, cellsW, cellsH}
 * where width/height are the padded grid and cellsW/cellsH the image part.
 */
export function prepareTarget(image, { size, padding, keyBackground }) {
  let source = image;
  if (keyBackground) {
    const [w, h] = thumbnailSize(image.width, image.height, KEY_WORK_SIDE);
    source = keyOutBackground(drawScaled(image, w, h));
  }
  const [cellsW, cellsH] = thumbnailSize(image.width, image.height, size);
  const small = drawScaled(source, cellsW, cellsH).getContext('2d').getImageData(0, 0, cellsW, cellsH).data;
  const width = cellsW + 2 * padding;
  const height = cellsH + 2 * padding;
  const rgba = new Float32Array(width * height * 4);
  for (let y = 0; y < cellsH; y++) {
    for (let x = 0; x < cellsW; x++) {
      const s = (y * cellsW + x) * 4;
      const d = ((y + padding) * width + x + padding) * 4;
      const a = small[s + 3] / 255;
      rgba[d] = (small[s] / 255) * a;
      rgba[d + 1] = (small[s + 1] / 255) * a;
      rgba[d + 2] = (small[s + 2] / 255) * a;
      rgba[d + 3] = a;
    }
  }
  return { rgba, width, height, cellsW, cellsH };
}

/** Render as the spec does (RGB over white: 1 - alpha + rgb) into an opaque ImageData. */
export function targetImageData(target) {
  const { rgba, width, height } = target;
  const out = new ImageData(width, height);
  for (let i = 0; i < rgba.length; i += 4) {
    const white = 1 - Math.min(Math.max(rgba[i + 3], 0), 1);
    out.data[i] = Math.round(Math.min(white + rgba[i], 1) * 255);
    out.data[i + 1] = Math.round(Math.min(white + rgba[i + 1], 1) * 255);
    out.data[i + 2] = Math.round(Math.min(white + rgba[i + 2], 1) * 255);
    out.data[i + 3] = 255;
  }
  return out;
}

/** True when (almost) nothing is opaque: the core refuses such targets. */
export function isEmptyTarget(target) {
  for (let i = 3; i < target.rgba.length; i += 4) if (target.rgba[i] > 0.1) return false;
  return true;
}
