// WebSocket client for the stream service (docs/stream-protocol.md): binary frames in, JSON
// commands out, reconnecting with exponential backoff when the connection drops.

export const HEADER_BYTES = 16;
const RETRY_MIN_MS = 500;
const RETRY_MAX_MS = 10000;
// Close codes after which the same request fails again (not UTF-8, flood, too big, bad query,
// origin, unknown model or room, idle viewer, room closed): the reason says why, and we do not retry on our own. Any
// other code (server restart, too many streams, too slow) is worth another try after a wait.
// The list is backend/stream/protocol.py's FINAL_CLOSE_CODES (a test checks that they match).
export const FINAL_CLOSE_CODES = [1007, 1008, 1009, 4400, 4403, 4404, 4408, 4410];

/**
 * Decode one binary frame: 16-byte little-endian header <IIHHI (frame, CA step, width, height,
 * flags) then width*height RGBA8 pixels, top row first. Returns null if the sizes do not add up.
 */
export function decodeFrame(buffer) {
  if (buffer.byteLength < HEADER_BYTES) return null;
  const view = new DataView(buffer);
  const frame = view.getUint32(0, true);
  const step = view.getUint32(4, true);
  const width = view.getUint16(8, true);
  const height = view.getUint16(10, true);
  const flags = view.getUint32(12, true);
  if (buffer.byteLength !== HEADER_BYTES + width * height * 4) return null;
  const pixels = new Uint8ClampedArray(buffer, HEADER_BYTES, width * height * 4);
  return { frame, step, width, height, flags, pixels };
}

/** ws(s)://host[:port][/path] of the stream service: GET /api/config's stream_url, else the page's own origin. */
export function streamBase(config, location = window.location) {
  const url = new URL(config.stream_url || '/', location.href);
  if (url.protocol === 'http:') url.protocol = 'ws:';
  if (url.protocol === 'https:') url.protocol = 'wss:';
  return url.href.replace(/\/$/, '');
}

/**
 * One viewer's connection. Callbacks: onFrame(frame), onEvent(json), onState(text, detail).
 * `params()` gives the query (model, fps, steps_per_frame, angle, ...) for each (re)connect, so a
 * reconnect resumes with the current settings.
 */
export class StreamClient {
  constructor(base, params, { onFrame, onEvent, onState }) {
    Object.assign(this, { base, params, onFrame, onEvent, onState });
    this.socket = null;
    this.retryMs = RETRY_MIN_MS;
    this.retryTimer = null;
    this.closed = true;
  }

  open() {
    this.closed = false;
    this.connect();
  }

  connect() {
    clearTimeout(this.retryTimer);
    const query = new URLSearchParams(this.params());
    const socket = new WebSocket(`${this.base}/ws/stream?${query}`);
    socket.binaryType = 'arraybuffer';
    this.socket = socket;
    this.onState('connecting');
    socket.onopen = () => {
      this.onState('open');
    };
    socket.onmessage = (message) => {
      if (socket !== this.socket) return;
      if (typeof message.data === 'string') {
        let event;
        try {
          event = JSON.parse(message.data);
        } catch {
          return;
        }
        this.onEvent(event);
        return;
      }
      const frame = decodeFrame(message.data);
      if (frame) {
        this.retryMs = RETRY_MIN_MS; // frames flow again: the next drop starts from a short wait
        this.onFrame(frame);
      }
    };
    socket.onclose = (event) => {
      if (socket !== this.socket || this.closed) return;
      this.socket = null;
      if (FINAL_CLOSE_CODES.includes(event.code)) {
        this.closed = true;
        this.onState('closed', event.reason || `the stream closed (code ${event.code})`);
        return;
      }
      const wait = this.retryMs;
      this.retryMs = Math.min(this.retryMs * 2, RETRY_MAX_MS);
      this.onState('retrying', `${event.reason ? `${event.reason}; ` : ''}reconnecting in ${(wait / 1000).toFixed(1)} s`);
      this.retryTimer = setTimeout(() => this.connect(), wait);
    };
  }

  /** Send a command object; dropped silently while disconnected (the next connect starts fresh). */
  send(command) {
    if (this.socket && this.socket.readyState === WebSocket.OPEN) {
      this.socket.send(JSON.stringify(command));
      return true;
    }
    return false;
  }

  close() {
    this.closed = true;
    clearTimeout(this.retryTimer);
    if (this.socket) this.socket.close(1000, 'viewer left');
    this.socket = null;
    this.onState('idle');
  }
}
