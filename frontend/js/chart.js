// A loss curve on a <canvas>: iteration on x, loss on a log10 y axis with decade grid lines.

const PAD = { left: 44, right: 8, top: 8, bottom: 20 };
const LINE = '#2563eb';
const GRID = '#e5e7eb';
const TEXT = '#6b7280';

/** `points` is [[iteration, loss], ...] with loss > 0; x runs from 0 to the last iteration. */
export function drawLossChart(canvas, points) {
  const dpr = window.devicePixelRatio || 1;
  const cssWidth = canvas.clientWidth || 320;
  const cssHeight = canvas.clientHeight || 120;
  if (canvas.width !== Math.round(cssWidth * dpr) || canvas.height !== Math.round(cssHeight * dpr)) {
    canvas.width = Math.round(cssWidth * dpr);
    canvas.height = Math.round(cssHeight * dpr);
  }
  const ctx = canvas.getContext('2d');
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.clearRect(0, 0, cssWidth, cssHeight);
  ctx.font = '11px system-ui, sans-serif';
  ctx.fillStyle = TEXT;

  const valid = points.filter(([, loss]) => Number.isFinite(loss) && loss > 0);
  if (valid.length === 0) {
    ctx.fillText('Loss appears here once training starts.', PAD.left, cssHeight / 2);
    return;
  }
  const logs = valid.map(([, loss]) => Math.log10(loss));
  let top = Math.ceil(Math.max(...logs));
  let bottom = Math.floor(Math.min(...logs));
  if (top === bottom) top += 1;
  const xEnd = Math.max(valid[valid.length - 1][0], 1);
  const plotW = cssWidth - PAD.left - PAD.right;
  const plotH = cssHeight - PAD.top - PAD.bottom;
  const x = (it) => PAD.left + (it / xEnd) * plotW;
  const y = (log) => PAD.top + ((top - log) / (top - bottom)) * plotH;

  // One grid line per decade; skip labels when decades are crowded.
  const every = Math.ceil((top - bottom) / Math.max(1, Math.floor(plotH / 16)));
  ctx.strokeStyle = GRID;
  ctx.lineWidth = 1;
  ctx.textAlign = 'right';
  ctx.textBaseline = 'middle';
  for (let d = bottom; d <= top; d++) {
    const yy = Math.round(y(d)) + 0.5;
    ctx.beginPath();
    ctx.moveTo(PAD.left, yy);
    ctx.lineTo(PAD.left + plotW, yy);
    ctx.stroke();
    if ((d - bottom) % every === 0) ctx.fillText(`1e${d}`, PAD.left - 6, yy);
  }
  ctx.textAlign = 'left';
  ctx.textBaseline = 'alphabetic';
  ctx.fillText('0', PAD.left, cssHeight - 5);
  ctx.textAlign = 'right';
  ctx.fillText(`${xEnd.toLocaleString()} it`, PAD.left + plotW, cssHeight - 5);

  ctx.strokeStyle = LINE;
  ctx.lineWidth = 1.5;
  ctx.lineJoin = 'round';
  ctx.beginPath();
  valid.forEach(([it], i) => (i === 0 ? ctx.moveTo(x(it), y(logs[i])) : ctx.lineTo(x(it), y(logs[i]))));
  if (valid.length === 1) ctx.arc(x(valid[0][0]), y(logs[0]), 1.5, 0, 2 * Math.PI);
  ctx.stroke();
}
