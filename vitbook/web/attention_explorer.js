// The no-kernel attention explorer of chapter 6 (vitbook.explorer.attention_explorer_html):
// __ID__ is the id of the plotly figure's div, and __ID__-controls of its drop-downs.
(function() {
  var box = document.getElementById("__ID__-controls");
  var gd = document.getElementById("__ID__");
  function pick(role) { return box.querySelector('select[data-role="' + role + '"]'); }
  function queryName(q, M) {
    if (q < M.prefix) { return q === 0 ? "class token" : "prefix token " + q; }
    return "patch (row " + Math.floor((q - M.prefix) / M.grid) + ", col " + ((q - M.prefix) % M.grid) + ")";
  }
  function update() {
    var M = gd.layout.meta, T = M.tokens, g = M.grid, P = M.prefix, H = M.heads, L = M.layers;
    var b = +pick("image").value, l = +pick("layer").value, q = +pick("query").value;
    function row(src, base) { var r = []; for (var k = 0; k < T; k++) { r.push(src[base + k] / 1000); } return r; }
    var rows = [];
    for (var h = 0; h < H; h++) { rows.push(row(M.attn, ((((b * L) + l) * H + h) * T + q) * T)); }
    var mean = [];
    for (var k = 0; k < T; k++) { var s = 0; for (h = 0; h < H; h++) { s += rows[h][k]; } mean.push(s / H); }
    rows.push(mean, row(M.rollout, (b * T + q) * T));
    var zs = rows.map(function(r) {
      var z = []; for (var i = 0; i < g; i++) { z.push(r.slice(P + i * g, P + (i + 1) * g)); } return z;
    });
    window.Plotly.restyle(gd, {z: zs}, M.heat_traces);
    if (pick("scale").value === "panel") {  // each panel on its own scale, 0 to its own largest weight
      window.Plotly.restyle(gd, {coloraxis: zs.map(function() { return null; }), colorscale: "Inferno", showscale: false,
        zmin: zs.map(function() { return 0; }),
        zmax: zs.map(function(z) { return Math.max(1e-3, Math.max.apply(null, [].concat.apply([], z))); })}, M.heat_traces);
    } else {
      window.Plotly.restyle(gd, {coloraxis: zs.map(function() { return "coloraxis"; })}, M.heat_traces);
    }
    window.Plotly.restyle(gd, {z: M.digit_traces.map(function() { return M.digits[b]; })}, M.digit_traces);
    var half = (M.patch - 1) / 2, mx = [null], my = [null];
    if (q >= P) { mx = [((q - P) % g) * M.patch + half]; my = [Math.floor((q - P) / g) * M.patch + half]; }
    window.Plotly.restyle(gd, {x: M.marker_traces.map(function() { return mx; }),
                               y: M.marker_traces.map(function() { return my; })}, M.marker_traces);
    var titles = {"title.text": "image " + b + " (" + M.labels[b] + "), layer " + l + ", query: " + queryName(q, M)};
    for (h = 0; h < H + 2; h++) {
      var name = h < H ? "head " + h : (h === H ? "mean of heads" : "rollout (all layers)");
      var toPrefix = 0; for (var t = 0; t < P; t++) { toPrefix += rows[h][t]; }
      titles["annotations[" + (h + 1) + "].text"] = name + "<br>to class token " + toPrefix.toFixed(2);
      titles["shapes[" + M.cls_shapes[h] + "].x1"] = toPrefix;
    }
    window.Plotly.relayout(gd, titles);
    box.setAttribute("data-state", b + "-" + l + "-" + q);
  }
  function attach() {
    if (!gd.on || !gd.layout) { return setTimeout(attach, 100); }
    gd.on("plotly_click", function(ev) {
      var M = gd.layout.meta, p = ev.points[0];
      var r = Math.min(M.grid - 1, Math.max(0, Math.floor((p.y + 0.5) / M.patch)));
      var c = Math.min(M.grid - 1, Math.max(0, Math.floor((p.x + 0.5) / M.patch)));
      pick("query").value = String(M.prefix + r * M.grid + c);
      update();
    });
    box.querySelectorAll("select").forEach(function(s) { s.addEventListener("change", update); });
    update();
  }
  attach();
})();
