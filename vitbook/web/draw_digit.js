/* Draw a digit: the book's chapter-4 ViT, running in the page.
 *
 * vitbook.drawdigit writes a cell's HTML output: a container, this script, and a JSON payload
 * with the model's configuration, its weights (float32, base64) and a few MNIST test digits.
 * Everything here is plain JavaScript: no library, no network, no kernel. The forward pass is
 * written out by hand (patch embedding, pre-LN blocks of multi-head attention and MLP, final
 * LayerNorm, head), in the order vitbook.model.ViT computes it, so that its logits equal
 * torch's to about 1e-6 (the browser test checks 200 test digits against 1e-4).
 *
 * Each widget instance exposes an API on its container element (el.vitbook) for the tests:
 * forward(Float32Array(784)) -> {logits, lens, attn, rollout}, setInput(...), predict(),
 * perturb(name, index, delta), benchmark(n).
 */
(function () {
  "use strict";
  if (window.VitbookDraw) return; // one definition per page, however many widgets

  // ---------------------------------------------------------------------------------------
  // The model: weights from the payload, and the forward pass.

  function decodeWeights(payload) {
    const bin = atob(payload.weights);
    const bytes = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
    const all = new Float32Array(bytes.buffer);
    const w = {};
    for (const [name, shape, offset] of payload.layout) {
      const n = shape.reduce((a, b) => a * b, 1);
      w[name] = all.subarray(offset, offset + n);
    }
    return w;
  }

  // erf to about 1e-7 (Numerical Recipes' erfc approximation): GELU as torch computes it.
  function erf(x) {
    const z = Math.abs(x);
    const t = 1 / (1 + 0.5 * z);
    const r = t * Math.exp(-z * z - 1.26551223 + t * (1.00002368 + t * (0.37409196 + t * (0.09678418 +
      t * (-0.18628806 + t * (0.27886807 + t * (-1.13520398 + t * (1.48851587 +
      t * (-0.82215223 + t * 0.17087277)))))))));
    return x >= 0 ? 1 - r : r - 1;
  }
  const gelu = (x) => 0.5 * x * (1 + erf(x / Math.SQRT2));

  function layerNorm(x, w, b, eps) {
    const n = x.length;
    let mean = 0;
    for (let i = 0; i < n; i++) mean += x[i];
    mean /= n;
    let v = 0;
    for (let i = 0; i < n; i++) v += (x[i] - mean) * (x[i] - mean);
    const inv = 1 / Math.sqrt(v / n + eps);
    const out = new Float64Array(n);
    for (let i = 0; i < n; i++) out[i] = (x[i] - mean) * inv * w[i] + b[i];
    return out;
  }

  // y = W x + b for W stored (out, in) row-major, as torch's nn.Linear keeps it.
  function linear(x, W, b, out) {
    const n = x.length;
    const y = new Float64Array(out);
    for (let o = 0; o < out; o++) {
      let s = b ? b[o] : 0;
      const row = o * n;
      for (let i = 0; i < n; i++) s += W[row + i] * x[i];
      y[o] = s;
    }
    return y;
  }

  function softmax(v) {
    let m = -Infinity;
    for (const a of v) m = Math.max(m, a);
    const e = v.map((a) => Math.exp(a - m));
    const s = e.reduce((a, b) => a + b, 0);
    return e.map((a) => a / s);
  }

  function forward(model, pixels) {
    const c = model.cfg, w = model.w;
    const P = c.patch_size, g = c.image_size / P, N = g * g, T = N + 1, D = c.dim;
    const H = c.heads, hd = D / H, scale = 1 / Math.sqrt(hd);
    // 1. Patch embedding: each P x P patch (row-major over the grid) times E, plus positions.
    let x = [];
    const cls = new Float64Array(D);
    for (let d = 0; d < D; d++) cls[d] = w["cls_token"][d] + w["pos_embed"][d];
    x.push(cls);
    const E = w["patch_embed.proj.weight"], Eb = w["patch_embed.proj.bias"];
    for (let r = 0; r < g; r++) {
      for (let q = 0; q < g; q++) {
        const patch = new Float64Array(P * P);
        for (let i = 0; i < P; i++)
          for (let j = 0; j < P; j++) patch[i * P + j] = pixels[(r * P + i) * c.image_size + q * P + j];
        const tok = linear(patch, E, Eb, D);
        const t = 1 + r * g + q;
        for (let d = 0; d < D; d++) tok[d] += w["pos_embed"][t * D + d];
        x.push(tok);
      }
    }
    const attn = [], lens = [];
    const readOut = (xs) => {
      const h = layerNorm(xs[0], w["norm.weight"], w["norm.bias"], c.norm_eps);
      return Array.from(linear(h, w["head.weight"], w["head.bias"], c.num_classes));
    };
    lens.push(readOut(x)); // before any block
    // 2. The blocks: x + MSA(LN(x)), then x + MLP(LN(x)).
    for (let l = 0; l < c.depth; l++) {
      const p = `blocks.${l}.`;
      const qkv = x.map((t) => linear(layerNorm(t, w[p + "norm1.weight"], w[p + "norm1.bias"], c.norm_eps),
        w[p + "attn.qkv.weight"], w[p + "attn.qkv.bias"], 3 * D));
      const maps = [];
      const mixed = x.map(() => new Float64Array(D));
      for (let h = 0; h < H; h++) {
        const rows = [];
        for (let i = 0; i < T; i++) {
          const scores = new Array(T);
          for (let j = 0; j < T; j++) {
            let s = 0;
            for (let d = 0; d < hd; d++) s += qkv[i][h * hd + d] * scale * qkv[j][D + h * hd + d];
            scores[j] = s;
          }
          const a = softmax(scores);
          rows.push(a);
          for (let j = 0; j < T; j++)
            for (let d = 0; d < hd; d++) mixed[i][h * hd + d] += a[j] * qkv[j][2 * D + h * hd + d];
        }
        maps.push(rows);
      }
      attn.push(maps);
      x = x.map((t, i) => {
        const o = linear(mixed[i], w[p + "attn.proj.weight"], w[p + "attn.proj.bias"], D);
        const y = new Float64Array(D);
        for (let d = 0; d < D; d++) y[d] = t[d] + o[d];
        const h2 = layerNorm(y, w[p + "norm2.weight"], w[p + "norm2.bias"], c.norm_eps);
        const f = linear(h2, w[p + "mlp.fc1.weight"], w[p + "mlp.fc1.bias"], c.mlp_dim).map(gelu);
        const m = linear(f, w[p + "mlp.fc2.weight"], w[p + "mlp.fc2.bias"], D);
        for (let d = 0; d < D; d++) y[d] += m[d];
        return y;
      });
      lens.push(readOut(x)); // the logit lens: the prediction read after this block
    }
    return { logits: lens[lens.length - 1], lens, attn, rollout: rollout(attn, 0.5) };
  }

  // Attention rollout (vitbook.attention.rollout): heads averaged, the residual mixed in.
  function rollout(attn, residual) {
    const T = attn[0][0].length;
    let joint = Array.from({ length: T }, (_, i) => Array.from({ length: T }, (_, j) => (i === j ? 1 : 0)));
    for (const layer of attn) {
      const a = Array.from({ length: T }, (_, i) => Array.from({ length: T }, (_, j) => {
        let m = 0;
        for (const head of layer) m += head[i][j];
        return residual * (i === j ? 1 : 0) + (1 - residual) * m / layer.length;
      }));
      for (const row of a) { const s = row.reduce((u, v) => u + v, 0); for (let j = 0; j < T; j++) row[j] /= s; }
      joint = a.map((row) => Array.from({ length: T }, (_, j) => row.reduce((s, v, k) => s + v * joint[k][j], 0)));
    }
    return joint;
  }

  // ---------------------------------------------------------------------------------------
  // A drawing as MNIST's digits were made: the ink's box scaled to fit 20 x 20 (aspect kept),
  // then placed in 28 x 28 so that its centre of mass is at the centre.

  function preprocess(canvas) {
    const W = canvas.width, Hh = canvas.height;
    const data = canvas.getContext("2d").getImageData(0, 0, W, Hh).data;
    let top = Hh, left = W, bottom = -1, right = -1;
    for (let y = 0; y < Hh; y++)
      for (let x = 0; x < W; x++)
        if (data[(y * W + x) * 4] > 12) {
          top = Math.min(top, y); bottom = Math.max(bottom, y);
          left = Math.min(left, x); right = Math.max(right, x);
        }
    const out = new Float32Array(784);
    if (bottom < 0) return out;
    const bw = right - left + 1, bh = bottom - top + 1, s = 20 / Math.max(bw, bh);
    const w20 = Math.max(1, Math.round(bw * s)), h20 = Math.max(1, Math.round(bh * s));
    const small = document.createElement("canvas");
    small.width = w20; small.height = h20;
    const sctx = small.getContext("2d");
    sctx.imageSmoothingEnabled = true;
    sctx.imageSmoothingQuality = "high";
    sctx.drawImage(canvas, left, top, bw, bh, 0, 0, w20, h20);
    const sd = sctx.getImageData(0, 0, w20, h20).data;
    let mass = 0, cx = 0, cy = 0;
    const v = new Float32Array(w20 * h20);
    for (let y = 0; y < h20; y++)
      for (let x = 0; x < w20; x++) {
        const a = sd[(y * w20 + x) * 4] / 255;
        v[y * w20 + x] = a; mass += a; cx += a * x; cy += a * y;
      }
    cx /= mass; cy /= mass;
    const dx = Math.round(13.5 - cx), dy = Math.round(13.5 - cy);
    for (let y = 0; y < h20; y++)
      for (let x = 0; x < w20; x++) {
        const X = x + dx, Y = y + dy;
        if (X >= 0 && X < 28 && Y >= 0 && Y < 28) out[Y * 28 + X] = v[y * w20 + x];
      }
    return out;
  }

  // ---------------------------------------------------------------------------------------
  // Drawing helpers

  const heat = (t) => { // 0..1 -> a warm colour (transparent black to yellow)
    t = Math.max(0, Math.min(1, t));
    const r = Math.round(255 * Math.min(1, 1.6 * t)), gg = Math.round(255 * Math.max(0, 1.6 * t - 0.6));
    return `rgba(${r},${gg},${Math.round(60 * (1 - t))},${0.25 + 0.7 * t})`;
  };

  function drawDigit(ctx, pixels, size) {
    const img = ctx.createImageData(28, 28);
    for (let i = 0; i < 784; i++) {
      const v = Math.round(255 * pixels[i]);
      img.data[4 * i] = img.data[4 * i + 1] = img.data[4 * i + 2] = v; img.data[4 * i + 3] = 255;
    }
    const tmp = document.createElement("canvas");
    tmp.width = 28; tmp.height = 28;
    tmp.getContext("2d").putImageData(img, 0, 0);
    ctx.imageSmoothingEnabled = false;
    ctx.drawImage(tmp, 0, 0, size, size);
  }

  function el(tag, attrs, ...kids) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "style") e.style.cssText = v; else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
      else e.setAttribute(k, v);
    }
    for (const k of kids) e.append(k);
    return e;
  }

  // ---------------------------------------------------------------------------------------
  // The widget

  function mount(root, payload) {
    const model = { cfg: payload.cfg, w: decodeWeights(payload) };
    const c = model.cfg, P = c.patch_size, g = c.image_size / P, T = g * g + 1;
    const st = { input: new Float32Array(784), erased: new Set(), layer: c.depth - 1, query: 0, hover: null,
      direction: "to", scale: "shared", mode: "draw", result: null, drawn: false, starter: null };
    root.classList.add("vbd");

    // -- input column
    const pad = el("canvas", { width: 280, height: 280, class: "vbd-pad", "aria-label": "drawing pad" });
    const seen = el("canvas", { width: 168, height: 168, class: "vbd-seen", "aria-label": "the 28 x 28 the model sees" });
    const modeDraw = el("button", { type: "button", class: "vbd-on", onclick: () => setMode("draw") }, "draw");
    const modeErase = el("button", { type: "button", onclick: () => setMode("erase") }, "erase patches");
    const clear = el("button", { type: "button", onclick: () => { clearPad(); st.erased.clear(); update(); } }, "clear");
    const starters = el("div", { class: "vbd-starters" });
    payload.starters.forEach((s, k) => {
      const cv = el("canvas", { width: 28, height: 28, title: `MNIST test digit (${s.label})` });
      const px = Float32Array.from(s.pixels, (v) => v / 255);
      drawDigit(cv.getContext("2d"), px, 28);
      cv.addEventListener("click", () => { useStarter(px); });
      starters.append(cv);
    });
    const probs = el("div", { class: "vbd-probs" });
    const lens = el("table", { class: "vbd-lens" });
    const heads = el("div", { class: "vbd-heads" });
    const controls = el("div", { class: "vbd-controls" });
    const status = el("div", { class: "vbd-status" });
    root.append(
      el("div", { class: "vbd-row" },
        el("div", { class: "vbd-col" }, pad, el("div", { class: "vbd-buttons" }, modeDraw, modeErase, clear)),
        el("div", { class: "vbd-col" },
          el("div", { class: "vbd-label" }, "what the model sees (28 x 28)"), seen,
          el("div", { class: "vbd-label" }, "start from a test digit"), starters)),
      el("div", { class: "vbd-label" }, "class probabilities (%)"), probs,
      el("div", { class: "vbd-label" }, "the logit lens: the prediction read after each block"), lens,
      el("div", { class: "vbd-label" }, "attention"), controls, heads, status);

    // -- drawing
    const pctx = pad.getContext("2d");
    function clearPad() {
      pctx.fillStyle = "#000"; pctx.fillRect(0, 0, 280, 280); st.drawn = false; st.starter = null;
      st.input = new Float32Array(784);
    }
    clearPad();
    let last = null;
    const at = (ev) => { const r = pad.getBoundingClientRect(); return [(ev.clientX - r.left) * 280 / r.width, (ev.clientY - r.top) * 280 / r.height]; };
    pad.addEventListener("pointerdown", (ev) => { pad.setPointerCapture(ev.pointerId); last = at(ev); stroke(last, last); ev.preventDefault(); });
    pad.addEventListener("pointermove", (ev) => { if (!last) return; const p = at(ev); stroke(last, p); last = p; ev.preventDefault(); });
    const end = () => { if (last) { last = null; update(); } };
    pad.addEventListener("pointerup", end);
    pad.addEventListener("pointercancel", end);
    pad.style.touchAction = "none";
    function stroke(a, b) {
      pctx.strokeStyle = "#fff"; pctx.lineWidth = 20; pctx.lineCap = "round"; pctx.lineJoin = "round";
      pctx.beginPath(); pctx.moveTo(a[0], a[1]); pctx.lineTo(b[0], b[1]); pctx.stroke();
      st.drawn = true; st.starter = null;
      if (!pending) { pending = true; requestAnimationFrame(() => { pending = false; update(); }); }
    }
    let pending = false;
    function useStarter(px) {
      clearPad(); st.erased.clear();
      const tmp = document.createElement("canvas"); tmp.width = 28; tmp.height = 28;
      drawDigit(tmp.getContext("2d"), px, 28);
      pctx.imageSmoothingEnabled = true; pctx.drawImage(tmp, 0, 0, 280, 280);
      st.starter = px; update();
    }
    function setMode(m) {
      st.mode = m; modeDraw.classList.toggle("vbd-on", m === "draw"); modeErase.classList.toggle("vbd-on", m === "erase");
      seen.style.cursor = m === "erase" ? "crosshair" : "pointer";
    }

    // -- the 28 x 28 view: click a patch to erase it (erase mode) or to make it the query
    const patchAt = (ev, cv) => {
      const r = cv.getBoundingClientRect();
      const col = Math.min(g - 1, Math.floor((ev.clientX - r.left) / r.width * g));
      const row = Math.min(g - 1, Math.floor((ev.clientY - r.top) / r.height * g));
      return row * g + col;
    };
    seen.addEventListener("mousemove", (ev) => { // hover previews a query
      if (st.mode !== "draw") return;
      const h = 1 + patchAt(ev, seen);
      if (h !== st.hover) { st.hover = h; render(); }
    });
    seen.addEventListener("mouseleave", () => { if (st.hover !== null) { st.hover = null; render(); } });
    seen.addEventListener("click", (ev) => {
      const p = patchAt(ev, seen);
      if (st.mode === "erase") { st.erased.has(p) ? st.erased.delete(p) : st.erased.add(p); update(); }
      else { st.query = 1 + p; render(); }
    });

    // -- controls
    function button(label, on, act) { return el("button", { type: "button", class: on ? "vbd-on" : "", onclick: act }, label); }
    function renderControls() {
      controls.replaceChildren(
        el("span", {}, "layer "), ...Array.from({ length: c.depth }, (_, l) => button(String(l + 1), st.layer === l, () => { st.layer = l; render(); })),
        el("span", {}, " query "), button("class token", st.query === 0, () => { st.query = 0; render(); }),
        el("span", { class: "vbd-q" }, st.query === 0 ? "" : ` patch row ${Math.floor((st.query - 1) / g) + 1}, col ${(st.query - 1) % g + 1}`),
        el("span", {}, " "), button("attends to", st.direction === "to", () => { st.direction = "to"; render(); }),
        button("attended by", st.direction === "by", () => { st.direction = "by"; render(); }),
        el("span", {}, " scale "), button("shared", st.scale === "shared", () => { st.scale = "shared"; render(); }),
        button("per panel", st.scale === "panel", () => { st.scale = "panel"; render(); }));
    }

    // -- update: preprocess, erase, forward; render: draw every view
    function update() {
      let x = st.starter ? Float32Array.from(st.starter) : (st.drawn ? preprocess(pad) : new Float32Array(784));
      for (const p of st.erased) {
        const r = Math.floor(p / g) * P, q = (p % g) * P;
        for (let i = 0; i < P; i++) for (let j = 0; j < P; j++) x[(r + i) * 28 + q + j] = 0;
      }
      st.input = x;
      const t0 = performance.now();
      st.result = forward(model, x);
      st.ms = performance.now() - t0;
      render();
    }

    function render() {
      const res = st.result;
      const sctx = seen.getContext("2d");
      drawDigit(sctx, st.input, 168);
      const cell = 168 / g;
      sctx.strokeStyle = "rgba(120,160,255,0.5)"; sctx.lineWidth = 1;
      for (let k = 1; k < g; k++) { sctx.beginPath(); sctx.moveTo(k * cell, 0); sctx.lineTo(k * cell, 168); sctx.moveTo(0, k * cell); sctx.lineTo(168, k * cell); sctx.stroke(); }
      for (const p of st.erased) { sctx.fillStyle = "rgba(255,60,60,0.35)"; sctx.fillRect((p % g) * cell, Math.floor(p / g) * cell, cell, cell); }
      const q = st.hover ?? st.query;
      if (q > 0) { sctx.strokeStyle = "#4af"; sctx.lineWidth = 3; sctx.strokeRect(((q - 1) % g) * cell + 1.5, Math.floor((q - 1) / g) * cell + 1.5, cell - 3, cell - 3); }
      if (!res) return;
      // probabilities
      const pr = softmax(res.logits), best = pr.indexOf(Math.max(...pr));
      probs.replaceChildren(...pr.map((p, k) => el("div", { class: "vbd-bar" + (k === best ? " vbd-best" : ""), title: `${k}: ${(100 * p).toFixed(2)}%` },
        el("span", { class: "vbd-pct" }, `${(100 * p).toFixed(p < 0.1 ? 1 : 0)}`),
        el("span", { class: "vbd-track" }, el("span", { class: "vbd-fill", style: `height:${(100 * p).toFixed(1)}%` })),
        el("span", { class: "vbd-digit" }, String(k)))));
      // the logit lens
      const head = el("tr", {}, el("th", {}, ""), ...Array.from({ length: c.num_classes }, (_, k) => el("th", {}, String(k))));
      const rows = res.lens.map((lg, l) => {
        const p = softmax(lg), b = p.indexOf(Math.max(...p));
        return el("tr", {}, el("th", {}, l === 0 ? "embedding" : `block ${l}`),
          ...p.map((v, k) => el("td", { style: `background:${heat(v)}`, class: k === b ? "vbd-best" : "" }, (100 * v).toFixed(0))));
      });
      lens.replaceChildren(head, ...rows);
      // attention: every head, their mean, and the rollout
      renderControls();
      const maps = res.attn[st.layer];
      const pick = (m) => st.direction === "to" ? m[q] : m.map((row) => row[q]); // a row, or a column
      const panels = maps.map((m, h) => [`head ${h + 1}`, pick(m)]);
      const mean = Array.from({ length: T }, (_, j) => maps.reduce((s, m) => s + pick(m)[j], 0) / maps.length);
      panels.push(["mean", mean], ["rollout", pick(res.rollout)]);
      const top = Math.max(...panels.flatMap(([, v]) => v.slice(1)));
      heads.replaceChildren(...panels.map(([name, v]) => {
        const cv = el("canvas", { width: 84, height: 84, class: "vbd-map" });
        const x = cv.getContext("2d");
        drawDigit(x, st.input, 84);
        const vmax = st.scale === "shared" ? top : Math.max(...v.slice(1));
        const s = 84 / g;
        for (let p = 0; p < g * g; p++) { x.fillStyle = heat(v[p + 1] / (vmax || 1)); x.fillRect((p % g) * s, Math.floor(p / g) * s, s, s); }
        if (q > 0) { x.strokeStyle = "#4af"; x.lineWidth = 2; x.strokeRect(((q - 1) % g) * s + 1, Math.floor((q - 1) / g) * s + 1, s - 2, s - 2); }
        cv.addEventListener("click", (ev) => { st.query = 1 + patchAt(ev, cv); st.hover = null; render(); });
        cv.addEventListener("mousemove", (ev) => { const h = 1 + patchAt(ev, cv); if (h !== st.hover) { st.hover = h; render(); } });
        cv.addEventListener("mouseleave", () => { st.hover = null; render(); });
        return el("figure", { class: "vbd-panel" }, cv,
          el("figcaption", {}, el("b", {}, name), el("br", {}), `class token ${(100 * v[0]).toFixed(0)}%`));
      }));
      const word = st.direction === "to" ? "attends to" : "is attended by";
      status.textContent = `${q === 0 ? "the class token" : "the outlined patch"} ${word}: layer ${st.layer + 1}, ` +
        `${st.scale === "shared" ? `one scale, 0 to ${(100 * top).toFixed(0)}%` : "each panel on its own scale"}; ` +
        `forward pass ${st.ms.toFixed(1)} ms in this page`;
    }

    const first = payload.starters.find((s) => s.label === 7) || payload.starters[0];
    if (first) useStarter(Float32Array.from(first.pixels, (v) => v / 255)); else update();
    setMode("draw");
    root.vitbook = {
      model, state: st,
      forward: (x) => forward(model, x),
      setInput: (x) => useStarter(Float32Array.from(x)),
      predict: () => softmax(st.result.logits).indexOf(Math.max(...softmax(st.result.logits))),
      perturb: (name, index, delta) => { model.w[name][index] += delta; update(); },
      preprocess: () => preprocess(pad),
      benchmark: (n) => { const t0 = performance.now(); for (let i = 0; i < n; i++) forward(model, st.input); return (performance.now() - t0) / n; },
    };
    (window.vitbookDrawWidgets = window.vitbookDrawWidgets || []).push(root);
  }

  window.VitbookDraw = { mount, forward, preprocess, decodeWeights };
})();
