// The Growing NCA rule in the browser, with no dependencies: the same function as backend/nca/model.py.
//
// One step: identity + Sobel perception of the 16 channels (zero padding; the gradient filters
// turned by the rotation angle), a 48-128-16 network per cell, a stochastic update (each cell fires
// with probability fireRate), then alive masking: a cell survives when some alpha in its 3x3
// neighbourhood exceeds 0.1 both before and after the update. As in backend/nca/fast.py the network
// runs only where it can matter: on cells that fire within two cells of a live one.
//
// Two implementations behind one interface (createCA): WebGL2 (float textures, one fragment per
// cell) where the browser has it with float render targets, plain JavaScript otherwise.
// The random fire masks differ from torch's, so runs agree with the core in their statistics.
//
// At the end, createViewer: what a person does to a CA on a canvas (drag, double-click, keys, pause),
// shared by the one-file player and the Watch view. It lives in this file because the player's builder
// (backend/exports/player.py) inlines ca.js and player.js and nothing else.

const ALIVE = 0.1;

/** Decode the embedded model: weights are base64 little-endian float32, in the model file's layout. */
export function decodeModel(json) {
  const floats = (b64) => {
    const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
    return new Float32Array(bytes.buffer);
  };
  const { channels: C, hidden: H } = json;
  const w1 = floats(json.weights.w1); // (hidden, 3C), input c*3 + k (channel-major)
  // Regroup the first layer's inputs band-major (k*C + c): identity, then Sobel-x, then Sobel-y.
  const w1band = new Float32Array(H * 3 * C);
  for (let j = 0; j < H; j++) {
    for (let c = 0; c < C; c++) {
      for (let k = 0; k < 3; k++) w1band[j * 3 * C + k * C + c] = w1[j * 3 * C + c * 3 + k];
    }
  }
  return {
    ...json, w1: w1band, b1: floats(json.weights.b1), w2: floats(json.weights.w2), b2: floats(json.weights.b2),
  };
}

/** A small seeded generator (mulberry32): runs can be repeated, and differ from one seed to the next. */
export function random(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/**
 * The CA on `canvas` (one canvas pixel per cell; CSS scales it up). `prefer`: 'auto' tries WebGL2
 * first, 'js' forces plain JavaScript. Returns {backend, reason, width, height, step(angle),
 * reset(seed), erase(x, y, r), plant(x, y), draw(), readState()}; readState gives H*W*C floats,
 * cell-major (row by row), like the core's state permuted to (H, W, C).
 */
export function createCA(canvas, model, prefer = 'auto') {
  let reason = 'JavaScript was asked for';
  if (prefer !== 'js') {
    const probe = probeWebGL2(model);
    if (probe === null) return new WebGLCA(canvas, model);
    reason = probe;
  }
  const ca = new CpuCA(canvas, model);
  ca.reason = reason;
  return ca;
}

function probeWebGL2(model) {
  if (model.channels !== 16) return `WebGL2 path needs 16 channels, this model has ${model.channels}`;
  const gl = document.createElement('canvas').getContext('webgl2');
  if (!gl) return 'this browser has no WebGL2';
  if (!gl.getExtension('EXT_color_buffer_float')) return 'WebGL2 without float render targets (EXT_color_buffer_float)';
  gl.getExtension('WEBGL_lose_context')?.loseContext();
  return null;
}

function seedState(width, height, channels) {
  const x = new Float32Array(width * height * channels);
  const i = (Math.floor(height / 2) * width + Math.floor(width / 2)) * channels;
  x.fill(1, i + 3, i + channels); // the seed: alpha and hidden channels 1, RGB 0 (make_seed)
  return x;
}

/** One pass of a separable dilation: a cell is set when some cell within `reach` along the row
 *  (`horizontal`) or the column is set in `src`; outside the grid counts as unset (zero padding). */
function dilateLine(src, W, H, reach, horizontal) {
  const out = new Uint8Array(W * H);
  for (let y = 0; y < H; y++) {
    for (let x = 0; x < W; x++) {
      let any = 0;
      for (let d = -reach; d <= reach && !any; d++) {
        const xd = horizontal ? x + d : x;
        const yd = horizontal ? y : y + d;
        if (xd >= 0 && xd < W && yd >= 0 && yd < H) any = src[yd * W + xd];
      }
      out[y * W + x] = any;
    }
  }
  return out;
}

/** What both implementations share: the model, the grid, and a canvas of one pixel per cell. */
class GridCA {
  constructor(canvas, model, backend) {
    this.backend = backend;
    this.reason = '';
    this.model = model;
    this.width = model.grid[1];
    this.height = model.grid[0];
    this.C = model.channels;
    canvas.width = this.width;
    canvas.height = this.height;
  }
}

// --- Plain JavaScript ------------------------------------------------------------------------

class CpuCA extends GridCA {
  constructor(canvas, model) {
    super(canvas, model, 'js');
    this.ctx = canvas.getContext('2d');
    this.image = this.ctx.createImageData(this.width, this.height);
    this.hiddenBuf = new Float32Array(model.hidden);
    this.perception = new Float32Array(3 * this.C);
    this.reset(1);
  }

  reset(seed) {
    this.x = seedState(this.width, this.height, this.C);
    this.rand = random(seed);
  }

  /** A (W*H) mask of cells with alpha > ALIVE within `reach` cells (Chebyshev distance). */
  near(x, reach) {
    const { width: W, height: H, C } = this;
    const live = new Uint8Array(W * H);
    for (let i = 0; i < W * H; i++) live[i] = x[i * C + 3] > ALIVE ? 1 : 0;
    return dilateLine(dilateLine(live, W, H, reach, true), W, H, reach, false);
  }

  step(angle = 0) {
    const { width: W, height: H, C, model } = this;
    const { w1, b1, w2, b2, hidden: NH, fire_rate: fireRate } = model;
    const x = this.x;
    const pre = this.near(x, 1);
    const reach2 = this.near(x, 2);
    const next = Float32Array.from(x);
    const cos = Math.cos(angle);
    const sin = Math.sin(angle);
    const p = this.perception;
    const h = this.hiddenBuf;
    const at = (yy, xx, c) => (yy < 0 || yy >= H || xx < 0 || xx >= W ? 0 : x[(yy * W + xx) * C + c]);
    for (let y = 0; y < H; y++) {
      for (let xx = 0; xx < W; xx++) {
        const cell = y * W + xx;
        if (this.rand() >= fireRate || !reach2[cell]) continue; // no update, or nothing alive near
        for (let c = 0; c < C; c++) {
          const a = at(y - 1, xx - 1, c); const b = at(y - 1, xx, c); const d = at(y - 1, xx + 1, c);
          const l = at(y, xx - 1, c); const r = at(y, xx + 1, c);
          const e = at(y + 1, xx - 1, c); const f = at(y + 1, xx, c); const g = at(y + 1, xx + 1, c);
          const sx = (d + 2 * r + g - a - 2 * l - e) / 8;
          const sy = (e + 2 * f + g - a - 2 * b - d) / 8;
          p[c] = x[cell * C + c];
          p[C + c] = cos * sx - sin * sy;
          p[2 * C + c] = sin * sx + cos * sy;
        }
        for (let j = 0; j < NH; j++) {
          let s = b1[j];
          const row = j * 3 * C;
          for (let i = 0; i < 3 * C; i++) s += w1[row + i] * p[i];
          h[j] = s > 0 ? s : 0;
        }
        for (let c = 0; c < C; c++) {
          let s = b2[c];
          const row = c * NH;
          for (let j = 0; j < NH; j++) s += w2[row + j] * h[j];
          next[cell * C + c] += s;
        }
      }
    }
    const post = this.near(next, 1);
    for (let cell = 0; cell < W * H; cell++) {
      if (!(pre[cell] && post[cell])) next.fill(0, cell * C, (cell + 1) * C);
    }
    this.x = next;
  }

  erase(cx, cy, radius) {
    const { width: W, height: H, C } = this;
    for (let y = 0; y < H; y++) {
      for (let xx = 0; xx < W; xx++) {
        if ((xx - cx) ** 2 + (y - cy) ** 2 <= radius * radius) this.x.fill(0, (y * W + xx) * C, (y * W + xx + 1) * C);
      }
    }
  }

  plant(cx, cy) {
    const i = (cy * this.width + cx) * this.C;
    this.x.fill(1, i + 3, i + this.C);
  }

  draw() {
    const { width: W, height: H, C } = this;
    const px = this.image.data;
    for (let cell = 0; cell < W * H; cell++) {
      const alpha = Math.min(Math.max(this.x[cell * C + 3], 0), 1);
      for (let c = 0; c < 3; c++) {
        const v = Math.min(Math.max(1 - alpha + this.x[cell * C + c], 0), 1);
        px[cell * 4 + c] = Math.round(v * 255);
      }
      px[cell * 4 + 3] = 255;
    }
    this.ctx.putImageData(this.image, 0, 0);
  }

  readState() {
    return Float32Array.from(this.x);
  }
}

// --- WebGL2 ----------------------------------------------------------------------------------

const VERTEX = `#version 300 es
in vec2 pos;
void main() { gl_Position = vec4(pos, 0.0, 1.0); }`;

const HEADER = `#version 300 es
precision highp float;
precision highp int;
precision highp sampler2D;
precision highp sampler2DArray;
uniform ivec2 size;
vec4 cell(sampler2DArray s, ivec2 p, int g) {
  if (p.x < 0 || p.y < 0 || p.x >= size.x || p.y >= size.y) return vec4(0.0);  // zero padding
  return texelFetch(s, ivec3(p, g), 0);
}
bool aliveNear(sampler2DArray s, ivec2 p, int reach) {
  for (int dy = -reach; dy <= reach; dy++)
    for (int dx = -reach; dx <= reach; dx++)
      if (cell(s, p + ivec2(dx, dy), 0).a > ${ALIVE}) return true;
  return false;
}
`;

// A pass that writes a state writes its four layers at once (channels 0-3, 4-7, 8-11, 12-15).
const STATE_OUTPUTS = `layout(location = 0) out vec4 o0;
layout(location = 1) out vec4 o1;
layout(location = 2) out vec4 o2;
layout(location = 3) out vec4 o3;`;

// Texture row y holds grid row y (as the core's tensors), so the Sobel filters read as in model.py.
const UPDATE = `${HEADER}
uniform sampler2DArray state;
uniform sampler2D w1;  // texel (i, j), i < 12: weights of inputs 4i..4i+3 into hidden unit j; (12, j).x: bias
uniform sampler2D w2;  // texel (g, j): weights of hidden unit j into channels 4g..4g+3; row HIDDEN: bias
uniform vec2 rot;      // cos, sin of the rotation angle
uniform uint stepSeed;
uniform float fireRate;
${STATE_OUTPUTS}

uint hash(uvec3 v) {  // pcg3d (Jarzynski & Olano 2020)
  v = v * 1664525u + 1013904223u;
  v.x += v.y * v.z; v.y += v.z * v.x; v.z += v.x * v.y;
  v ^= v >> 16u;
  v.x += v.y * v.z; v.y += v.z * v.x; v.z += v.x * v.y;
  return v.x ^ v.y ^ v.z;
}

void main() {
  ivec2 p = ivec2(gl_FragCoord.xy);
  vec4 x[4];
  for (int g = 0; g < 4; g++) x[g] = cell(state, p, g);
  float u = float(hash(uvec3(uvec2(p), stepSeed)) >> 8u) / 16777216.0;
  if (u < fireRate && aliveNear(state, p, 2)) {
    vec4 perception[12];  // band-major: identity, Sobel-x, Sobel-y, each for channels 0-3, 4-7, 8-11, 12-15
    for (int g = 0; g < 4; g++) {
      vec4 a = cell(state, p + ivec2(-1, -1), g), b = cell(state, p + ivec2(0, -1), g), d = cell(state, p + ivec2(1, -1), g);
      vec4 l = cell(state, p + ivec2(-1, 0), g), r = cell(state, p + ivec2(1, 0), g);
      vec4 e = cell(state, p + ivec2(-1, 1), g), f = cell(state, p + ivec2(0, 1), g), h = cell(state, p + ivec2(1, 1), g);
      vec4 sx = (d + 2.0 * r + h - a - 2.0 * l - e) / 8.0;
      vec4 sy = (e + 2.0 * f + h - a - 2.0 * b - d) / 8.0;
      perception[g] = x[g];
      perception[4 + g] = rot.x * sx - rot.y * sy;
      perception[8 + g] = rot.y * sx + rot.x * sy;
    }
    vec4 dx[4];
    for (int g = 0; g < 4; g++) dx[g] = texelFetch(w2, ivec2(g, HIDDEN), 0);
    for (int j = 0; j < HIDDEN; j++) {
      float s = texelFetch(w1, ivec2(12, j), 0).x;
      for (int i = 0; i < 12; i++) s += dot(texelFetch(w1, ivec2(i, j), 0), perception[i]);
      if (s > 0.0) {
        for (int g = 0; g < 4; g++) dx[g] += s * texelFetch(w2, ivec2(g, j), 0);
      }
    }
    for (int g = 0; g < 4; g++) x[g] += dx[g];
  }
  o0 = x[0]; o1 = x[1]; o2 = x[2]; o3 = x[3];
}`;

const MASK = `${HEADER}
uniform sampler2DArray before;
uniform sampler2DArray updated;
${STATE_OUTPUTS}
void main() {
  ivec2 p = ivec2(gl_FragCoord.xy);
  float keep = aliveNear(before, p, 1) && aliveNear(updated, p, 1) ? 1.0 : 0.0;
  o0 = keep * cell(updated, p, 0); o1 = keep * cell(updated, p, 1);
  o2 = keep * cell(updated, p, 2); o3 = keep * cell(updated, p, 3);
}`;

const EDIT = `${HEADER}
uniform sampler2DArray state;
uniform int mode;  // 1: erase the disc, 2: plant a seed at the centre
uniform vec2 centre;
uniform float radius;
${STATE_OUTPUTS}
void main() {
  ivec2 p = ivec2(gl_FragCoord.xy);
  vec4 x0 = cell(state, p, 0), x1 = cell(state, p, 1), x2 = cell(state, p, 2), x3 = cell(state, p, 3);
  vec2 d = vec2(p) - centre;
  if (mode == 1 && dot(d, d) <= radius * radius) { x0 = vec4(0.0); x1 = x0; x2 = x0; x3 = x0; }
  if (mode == 2 && p == ivec2(centre)) { x0.a = 1.0; x1 = vec4(1.0); x2 = x1; x3 = x1; }
  o0 = x0; o1 = x1; o2 = x2; o3 = x3;
}`;

const DISPLAY = `${HEADER}
uniform sampler2DArray state;
out vec4 colour;
void main() {
  ivec2 p = ivec2(int(gl_FragCoord.x), size.y - 1 - int(gl_FragCoord.y));  // canvas row 0 is grid row 0
  vec4 x = cell(state, p, 0);
  float alpha = clamp(x.a, 0.0, 1.0);
  colour = vec4(clamp(1.0 - alpha + x.rgb, 0.0, 1.0), 1.0);  // premultiplied RGB on white (to_rgb)
}`;

class WebGLCA extends GridCA {
  constructor(canvas, model) {
    super(canvas, model, 'webgl2');
    const gl = canvas.getContext('webgl2', {
      antialias: false, depth: false, stencil: false, alpha: false, preserveDrawingBuffer: true,
    });
    this.gl = gl;
    gl.getExtension('EXT_color_buffer_float');
    const defines = `#define HIDDEN ${model.hidden}\n`;
    const withDefines = (src) => src.replace('\n', `\n${defines}`);
    this.programs = {
      update: this.program(withDefines(UPDATE)),
      mask: this.program(MASK),
      edit: this.program(EDIT),
      display: this.program(DISPLAY),
    };
    const quad = gl.createBuffer();
    gl.bindBuffer(gl.ARRAY_BUFFER, quad);
    gl.bufferData(gl.ARRAY_BUFFER, new Float32Array([-1, -1, 3, -1, -1, 3]), gl.STATIC_DRAW);
    this.textures = [0, 1, 2].map(() => this.stateTexture());
    this.framebuffers = this.textures.map((t) => this.framebuffer(t));
    this.weights = this.weightTextures(model);
    this.current = 0; // index of the state texture; the other two are scratch
    this.stepCount = 0;
    this.reset(1);
  }

  program(fragment) {
    const gl = this.gl;
    const compile = (type, src) => {
      const s = gl.createShader(type);
      gl.shaderSource(s, src);
      gl.compileShader(s);
      if (!gl.getShaderParameter(s, gl.COMPILE_STATUS)) throw new Error(gl.getShaderInfoLog(s));
      return s;
    };
    const p = gl.createProgram();
    gl.attachShader(p, compile(gl.VERTEX_SHADER, VERTEX));
    gl.attachShader(p, compile(gl.FRAGMENT_SHADER, fragment));
    gl.bindAttribLocation(p, 0, 'pos');
    gl.linkProgram(p);
    if (!gl.getProgramParameter(p, gl.LINK_STATUS)) throw new Error(gl.getProgramInfoLog(p));
    return p;
  }

  stateTexture() {
    const gl = this.gl;
    const t = gl.createTexture();
    gl.bindTexture(gl.TEXTURE_2D_ARRAY, t);
    gl.texStorage3D(gl.TEXTURE_2D_ARRAY, 1, gl.RGBA32F, this.width, this.height, 4);
    for (const k of [gl.TEXTURE_MIN_FILTER, gl.TEXTURE_MAG_FILTER]) gl.texParameteri(gl.TEXTURE_2D_ARRAY, k, gl.NEAREST);
    return t;
  }

  framebuffer(texture) {
    const gl = this.gl;
    const fb = gl.createFramebuffer();
    gl.bindFramebuffer(gl.FRAMEBUFFER, fb);
    for (let g = 0; g < 4; g++) gl.framebufferTextureLayer(gl.FRAMEBUFFER, gl.COLOR_ATTACHMENT0 + g, texture, 0, g);
    gl.drawBuffers([0, 1, 2, 3].map((g) => gl.COLOR_ATTACHMENT0 + g));
    if (gl.checkFramebufferStatus(gl.FRAMEBUFFER) !== gl.FRAMEBUFFER_COMPLETE) throw new Error('float framebuffer incomplete');
    return fb;
  }

  weightTextures({ w1, b1, w2, b2, hidden: NH }) {
    const gl = this.gl;
    const texture = (w, h, data) => {
      const t = gl.createTexture();
      gl.bindTexture(gl.TEXTURE_2D, t);
      gl.texImage2D(gl.TEXTURE_2D, 0, gl.RGBA32F, w, h, 0, gl.RGBA, gl.FLOAT, data);
      for (const k of [gl.TEXTURE_MIN_FILTER, gl.TEXTURE_MAG_FILTER]) gl.texParameteri(gl.TEXTURE_2D, k, gl.NEAREST);
      return t;
    };
    const first = new Float32Array(13 * 4 * NH); // width 13 texels of 4 floats, one row per hidden unit
    for (let j = 0; j < NH; j++) {
      first.set(w1.subarray(j * 48, (j + 1) * 48), j * 52);
      first[j * 52 + 48] = b1[j];
    }
    const second = new Float32Array(16 * (NH + 1)); // width 4 texels, one row per hidden unit, then the bias
    for (let j = 0; j < NH; j++) {
      for (let c = 0; c < 16; c++) second[j * 16 + c] = w2[c * NH + j];
    }
    second.set(b2, NH * 16);
    return { w1: texture(13, NH, first), w2: texture(4, NH + 1, second) };
  }

  pass(name, target, inputs, uniforms = {}) {
    const gl = this.gl;
    const p = this.programs[name];
    gl.useProgram(p);
    gl.bindFramebuffer(gl.FRAMEBUFFER, target);
    gl.viewport(0, 0, this.width, this.height);
    let unit = 0;
    for (const [uniform, [kind, texture]] of Object.entries(inputs)) {
      gl.activeTexture(gl.TEXTURE0 + unit);
      gl.bindTexture(kind, texture);
      gl.uniform1i(gl.getUniformLocation(p, uniform), unit++);
    }
    gl.uniform2i(gl.getUniformLocation(p, 'size'), this.width, this.height);
    for (const [uniform, [setter, ...values]] of Object.entries(uniforms)) {
      gl[setter](gl.getUniformLocation(p, uniform), ...values);
    }
    gl.enableVertexAttribArray(0);
    gl.vertexAttribPointer(0, 2, gl.FLOAT, false, 0, 0);
    gl.drawArrays(gl.TRIANGLES, 0, 3);
  }

  array(i) { return [this.gl.TEXTURE_2D_ARRAY, this.textures[i]]; }

  reset(seed) {
    const gl = this.gl;
    const { width: W, height: H } = this;
    const x = seedState(W, H, 16);
    const layers = new Float32Array(W * H * 16); // layer g holds channels 4g..4g+3
    for (let cell = 0; cell < W * H; cell++) {
      for (let c = 0; c < 16; c++) layers[((c >> 2) * W * H + cell) * 4 + (c & 3)] = x[cell * 16 + c];
    }
    gl.bindTexture(gl.TEXTURE_2D_ARRAY, this.textures[this.current]);
    gl.texSubImage3D(gl.TEXTURE_2D_ARRAY, 0, 0, 0, 0, W, H, 4, gl.RGBA, gl.FLOAT, layers);
    this.seedBase = (Math.imul(seed >>> 0, 0x9e3779b1) >>> 0);
    this.stepCount = 0;
  }

  step(angle = 0) {
    const [a, b, c] = [this.current, (this.current + 1) % 3, (this.current + 2) % 3];
    const { w1, w2 } = this.weights;
    const gl = this.gl;
    this.pass('update', this.framebuffers[b], {
      state: this.array(a), w1: [gl.TEXTURE_2D, w1], w2: [gl.TEXTURE_2D, w2],
    }, {
      rot: ['uniform2f', Math.cos(angle), Math.sin(angle)],
      stepSeed: ['uniform1ui', (this.seedBase + this.stepCount++) >>> 0],
      fireRate: ['uniform1f', this.model.fire_rate],
    });
    this.pass('mask', this.framebuffers[c], { before: this.array(a), updated: this.array(b) });
    this.current = c;
  }

  edit(mode, cx, cy, radius) {
    const next = (this.current + 1) % 3;
    this.pass('edit', this.framebuffers[next], { state: this.array(this.current) }, {
      mode: ['uniform1i', mode], centre: ['uniform2f', cx, cy], radius: ['uniform1f', radius],
    });
    this.current = next;
  }

  erase(cx, cy, radius) { this.edit(1, cx, cy, radius); }

  plant(cx, cy) { this.edit(2, cx, cy, 0); }

  draw() {
    this.pass('display', null, { state: this.array(this.current) });
  }

  readState() {
    const gl = this.gl;
    const { width: W, height: H } = this;
    const layer = new Float32Array(W * H * 4);
    const out = new Float32Array(W * H * 16);
    gl.bindFramebuffer(gl.FRAMEBUFFER, this.framebuffers[this.current]);
    for (let g = 0; g < 4; g++) {
      gl.readBuffer(gl.COLOR_ATTACHMENT0 + g);
      gl.readPixels(0, 0, W, H, gl.RGBA, gl.FLOAT, layer);
      for (let cell = 0; cell < W * H; cell++) {
        for (let k = 0; k < 4; k++) out[cell * 16 + g * 4 + k] = layer[cell * 4 + k];
      }
    }
    return out;
  }
}

// --- The viewer: canvas, pointer, keys and pause, for the player and the Watch view -------------------

/** Where key presses already mean something of their own (typing, pressing a button or a link). */
const KEYS_BELONG_TO = 'input, select, textarea, button, a, summary, [contenteditable]';

/**
 * What a person does to a CA shown on `canvas`, in one place: drag to erase, double-click to plant a seed,
 * Space to play or pause, S to step, R to reset, and the paused state behind the Play/Pause button.
 *
 * `grid()` gives the grid's [width, height] in cells (zeros while nothing is shown). `actions`:
 * erase(x, y) with cell coordinates in [0, width] x [0, height] (fractions: where the pointer is),
 * plant(x, y) with whole cells, pause(paused) when the person pauses or plays, step(), reset().
 * `showPaused(paused)` updates the page (the button's label); `active()` says whether the keys apply
 * now (e.g. the view is shown). The paused state is the viewer's: `setPaused(value)` is for what the
 * CA's owner reports (a server's `state` event) and does not call `actions.pause` back.
 */
export function createViewer(canvas, { grid, actions, showPaused = () => {}, active = () => true }) {
  let paused = false;
  let erasing = false;

  function setPaused(value) {
    paused = Boolean(value);
    showPaused(paused);
  }
  function togglePause() {
    setPaused(!paused);
    actions.pause(paused);
  }
  function step() {
    if (!paused) {
      setPaused(true);
      actions.pause(true);
    }
    actions.step();
  }

  /** The pointer's place on the grid; it may leave the canvas while captured: kept on the grid. */
  function cellAt(event) {
    const rect = canvas.getBoundingClientRect();
    const [w, h] = grid();
    const clamp = (v, max) => Math.min(Math.max(v, 0), max);
    return [
      clamp(((event.clientX - rect.left) / rect.width) * w, w),
      clamp(((event.clientY - rect.top) / rect.height) * h, h),
    ];
  }
  function erase(event) {
    if (!grid()[0]) return;
    actions.erase(...cellAt(event));
  }
  canvas.addEventListener('pointerdown', (event) => {
    if (event.button !== 0) return;
    erasing = true;
    canvas.setPointerCapture(event.pointerId);
    erase(event);
  });
  canvas.addEventListener('pointermove', (event) => { if (erasing) erase(event); });
  canvas.addEventListener('pointerup', () => { erasing = false; });
  canvas.addEventListener('pointercancel', () => { erasing = false; });
  canvas.addEventListener('dblclick', (event) => {
    const [w, h] = grid();
    if (!w) return;
    const [x, y] = cellAt(event);
    actions.plant(Math.min(w - 1, Math.floor(x)), Math.min(h - 1, Math.floor(y)));
  });

  document.addEventListener('keydown', (event) => {
    if (!active() || event.ctrlKey || event.metaKey || event.altKey) return;
    if (event.target instanceof Element && event.target.closest(KEYS_BELONG_TO)) return;
    const action = { ' ': togglePause, s: step, S: step, r: actions.reset, R: actions.reset }[event.key];
    if (action) {
      event.preventDefault();
      action();
    }
  });

  return {
    get paused() { return paused; },
    setPaused,
    togglePause,
    step,
    reset: () => actions.reset(),
  };
}
