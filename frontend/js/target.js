// The Train view's two pictures: the chosen image as it is ("before") and the target the server
// makes of it ("after": POST /api/targets/preview runs the core's own processing, the subject
// cut-out included, so what is shown is exactly what the job will train on).

/** The preview's base64 RGBA PNG as ImageData on white (the spec renders a state as RGB over white). */
export async function targetOnWhite(base64Png) {
  const bytes = Uint8Array.from(atob(base64Png), (c) => c.charCodeAt(0));
  const bitmap = await createImageBitmap(new Blob([bytes], { type: 'image/png' }),
    { colorSpaceConversion: 'none' });
  const canvas = document.createElement('canvas');
  canvas.width = bitmap.width;
  canvas.height = bitmap.height;
  const ctx = canvas.getContext('2d', { willReadFrequently: true });
  ctx.fillStyle = '#fff';
  ctx.fillRect(0, 0, canvas.width, canvas.height);
  ctx.drawImage(bitmap, 0, 0);
  bitmap.close();
  return ctx.getImageData(0, 0, canvas.width, canvas.height);
}

/** Draw a decoded image (ImageBitmap) into `canvas`, fitted in maxSide x maxSide device pixels. */
export function drawPhoto(canvas, image, maxSide) {
  const scale = Math.min(1, maxSide / Math.max(image.width, image.height));
  canvas.width = Math.max(1, Math.round(image.width * scale));
  canvas.height = Math.max(1, Math.round(image.height * scale));
  const ctx = canvas.getContext('2d');
  ctx.imageSmoothingEnabled = true;
  ctx.imageSmoothingQuality = 'high';
  ctx.drawImage(image, 0, 0, canvas.width, canvas.height);
}

/** Place the dashed frame (an element over the canvas, so the canvas keeps only cells) around the image
 * part of the grid: the padding outside it is the room the pattern grows into. */
export function frameImage(frame, { grid_width: width, grid_height: height, padding }) {
  frame.hidden = !padding;
  const pct = (n, of) => `${(100 * n) / of}%`;
  Object.assign(frame.style, {
    left: pct(padding, width), top: pct(padding, height),
    width: pct(width - 2 * padding, width), height: pct(height - 2 * padding, height),
  });
}
