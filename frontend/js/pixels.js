// Showing a small grid of cells on a big canvas: every cell a crisp square (nearest neighbour).

/**
 * Draw `image` (ImageData, one pixel per cell) onto `canvas`, scaled up by the largest whole
 * factor that fits `maxSide` device pixels. Returns the scale used. The small image goes through
 * an offscreen canvas because putImageData cannot scale.
 */
export function drawCells(canvas, image, maxSide, offscreen = document.createElement('canvas')) {
  if (offscreen.width !== image.width || offscreen.height !== image.height) {
    offscreen.width = image.width;
    offscreen.height = image.height;
  }
  offscreen.getContext('2d').putImageData(image, 0, 0);
  const scale = Math.max(1, Math.floor(maxSide / Math.max(image.width, image.height)));
  const width = image.width * scale;
  const height = image.height * scale;
  if (canvas.width !== width || canvas.height !== height) {
    canvas.width = width; // resizing also clears the canvas and resets its context state
    canvas.height = height;
  }
  const ctx = canvas.getContext('2d');
  ctx.imageSmoothingEnabled = false;
  ctx.drawImage(offscreen, 0, 0, width, height);
  return scale;
}

/**
 * Draw a stream frame ({width, height, pixels}: RGBA, the RGB already composited on white, as the spec
 * renders it) opaque onto `canvas`, each cell a crisp square, as large as `cssSide` allows.
 */
export function drawFrame(canvas, frame, cssSide, offscreen) {
  const image = new ImageData(frame.width, frame.height);
  image.data.set(frame.pixels);
  for (let i = 3; i < image.data.length; i += 4) image.data[i] = 255;
  return drawCells(canvas, image, deviceSide(canvas, cssSide), offscreen);
}

/** Device pixels available for a canvas whose CSS box is `element`'s content width. */
export function deviceSide(element, fallback) {
  const css = element.clientWidth || fallback;
  return Math.round(css * (window.devicePixelRatio || 1));
}
