/* afov_ray scan viewer: reads the JSON block #afov-data, draws one plotly scatter3d trace and
 * recolours it per layer. State and helpers for tests: window.afovViewer. No network access. */
(function () {
  "use strict";
  var V = (window.afovViewer = { ready: false, error: null });
  var DIM = { dark: "#343a42", light: "#e6e6e6" };
  var AXIS = { dark: { grid: "#2c3138", text: "#9aa0a6" }, light: { grid: "#e3e3e3", text: "#555555" } };

  function decode(b64, dtype) {
    var s = atob(b64), n = s.length, u = new Uint8Array(n);
    for (var i = 0; i < n; i++) u[i] = s.charCodeAt(i);
    // Little-endian typed arrays (every browser platform in use is little-endian).
    if (dtype === "u1") return u;
    if (dtype === "u2") return new Uint16Array(u.buffer);
    if (dtype === "f4") return new Float32Array(u.buffer);
    throw new Error("unknown dtype " + dtype);
  }

  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }

  function fmt(v) {
    if (v === null || v === undefined) return "-";
    var a = Math.abs(v);
    return a !== 0 && (a < 0.01 || a >= 1e4) ? v.toExponential(2) : v.toFixed(a < 10 ? 3 : 1);
  }

  function layerColors(L) {
    var n = V.numDrawn, out = new Array(n), vals = L.values, i;
    if (L.kind === "continuous") {
      var lut = L.lut, k = lut.length - 1, lo = L.vmin, span = L.vmax - L.vmin;
      for (i = 0; i < n; i++) {
        var v = vals[i];
        if (!isFinite(v)) { out[i] = L.nanColor; continue; }
        var t = (v - lo) / span;
        t = t < 0 ? 0 : t > 1 ? 1 : t;
        out[i] = lut[Math.floor(t * k + 0.5)];
      }
      return out;
    }
    var dim = DIM[V.background], css = L.classes.map(function (c) {
      return V.isolate === null || V.isolate === c.id ? c.color : dim;
    });
    for (i = 0; i < n; i++) out[i] = css[vals[i]];
    return out;
  }

  function layerText(L) {
    var n = V.numDrawn, out = new Array(n), vals = L.values, i;
    if (L.kind === "continuous") {
      for (i = 0; i < n; i++) out[i] = L.name + ": " + (isFinite(vals[i]) ? vals[i].toFixed(3) : "none");
      return out;
    }
    var names = L.classes.map(function (c) { return L.name + ": " + c.name; });
    for (i = 0; i < n; i++) out[i] = names[vals[i]];
    return out;
  }

  function legendRow(color, name, count, id, L) {
    var row = el("div", "afov-row"), sw = el("span", "afov-swatch");
    sw.style.background = color;
    row.appendChild(sw);
    row.appendChild(el("span", "afov-name", name));
    row.appendChild(el("span", "afov-num", count.toLocaleString("en-US")));
    row.dataset.classId = String(id);
    row.title = "click: show only " + name + " (click again: all)";
    if (count === 0) row.classList.add("empty");
    if (V.isolate === id) row.classList.add("selected");
    row.addEventListener("click", function () {
      V.isolate = V.isolate === id ? null : id;
      recolor();
    });
    return row;
  }

  function drawLegend(L) {
    var box = document.getElementById("afov-legend"), i;
    box.textContent = "";
    document.getElementById("afov-legend-title").textContent = "legend: " + L.name;
    if (L.kind === "continuous") {
      var bar = el("div", "afov-bar"), stops = [];
      for (i = 0; i < L.lut.length; i += 17) stops.push(L.lut[i]);
      stops.push(L.lut[L.lut.length - 1]);
      bar.style.background = "linear-gradient(to right, " + stops.join(", ") + ")";
      var ticks = el("div", "afov-ticks");
      ticks.appendChild(el("span", "", fmt(L.vmin)));
      ticks.appendChild(el("span", "", fmt((L.vmin + L.vmax) / 2)));
      ticks.appendChild(el("span", "", fmt(L.vmax)));
      if (L.label) box.appendChild(el("div", "afov-note", L.label));
      box.appendChild(bar);
      box.appendChild(ticks);
      var s = L.stats;
      box.appendChild(el("div", "afov-note", "min " + fmt(s.min) + " / mean " + fmt(s.mean) + " / max " + fmt(s.max)));
      if (s.missing) box.appendChild(el("div", "afov-note", s.missing.toLocaleString("en-US") + " points without a value (grey)"));
      return;
    }
    if (L.label) box.appendChild(el("div", "afov-note", L.label));
    L.classes.forEach(function (c) { box.appendChild(legendRow(c.color, c.name, c.count, c.id, L)); });
    if (L.kind === "error") {
      box.appendChild(el("div", "afov-note", L.accuracy === null ? "no scored point" :
        "accuracy " + (100 * L.accuracy).toFixed(1) + "% (ignored points not scored)"));
    }
    box.appendChild(el("div", "afov-note", "counts: all " + V.numPoints.toLocaleString("en-US") + " points"));
  }

  function recolor() {
    var L = V.layerData[V.index];
    var p = Plotly.restyle(V.gd, { "marker.color": [layerColors(L)], text: [layerText(L)] }, [0]);
    drawLegend(L);
    return p;
  }

  function setLayer(which) {
    var i = typeof which === "number" ? which : V.layers.indexOf(which);
    if (i < 0 || i >= V.layers.length) throw new Error("no layer " + which);
    V.index = i;
    V.current = V.layers[i];
    V.isolate = null;
    var buttons = document.querySelectorAll("button.afov-layer");
    for (var b = 0; b < buttons.length; b++) buttons[b].classList.toggle("active", b === i);
    document.body.dataset.layer = V.current;
    return recolor();
  }

  function sceneLayout(bg) {
    var a = AXIS[bg], color = bg === "dark" ? "#15181d" : "#ffffff";
    function axis(t) {
      return { title: { text: t }, gridcolor: a.grid, zerolinecolor: a.grid, color: a.text,
               showbackground: false, showspikes: false };
    }
    return { paper_bgcolor: color, "scene.bgcolor": color, "scene.xaxis": axis("x [m]"),
             "scene.yaxis": axis("y [m]"), "scene.zaxis": axis("z [m]") };
  }

  function setBackground(bg) {
    V.background = bg;
    document.body.classList.remove("afov-dark", "afov-light");
    document.body.classList.add("afov-" + bg);
    Plotly.relayout(V.gd, sceneLayout(bg));
    return recolor();
  }

  // True proportions with the longest axis = 1, so that the camera frames every scan alike
  // (plotly's "data" mode normalises the box volume instead, which zooms in on flat scans).
  function aspect(x, y, z) {
    var r = [x, y, z].map(function (a) {
      var lo = Infinity, hi = -Infinity;
      for (var i = 0; i < a.length; i++) { var v = a[i]; if (v < lo) lo = v; if (v > hi) hi = v; }
      return hi > lo ? hi - lo : 0;
    });
    var m = Math.max(r[0], r[1], r[2]) || 1;
    return { x: Math.max(r[0] / m, 0.01), y: Math.max(r[1] / m, 0.01), z: Math.max(r[2] / m, 0.01) };
  }

  function init() {
    var data = JSON.parse(document.getElementById("afov-data").textContent);
    V.numPoints = data.numPoints;
    V.numDrawn = data.numDrawn;
    V.title = data.title;
    V.layers = data.layers.map(function (l) { return l.name; });
    V.layerData = data.layers.map(function (l) {
      l.values = decode(l.data, l.dtype);
      delete l.data;
      if (l.values.length !== data.numDrawn) throw new Error("layer " + l.name + ": wrong length");
      return l;
    });
    V.background = data.background;
    V.isolate = null;
    var xyz = decode(data.xyz, "f4"), n = data.numDrawn;
    var x = new Float32Array(n), y = new Float32Array(n), z = new Float32Array(n);
    for (var i = 0; i < n; i++) { x[i] = xyz[3 * i]; y[i] = xyz[3 * i + 1]; z[i] = xyz[3 * i + 2]; }
    V.gd = document.getElementById("afov-plot");
    V.camera = { eye: { x: -0.85, y: -0.35, z: 0.7 }, up: { x: 0, y: 0, z: 1 }, center: { x: 0, y: 0, z: -0.15 } };
    var first = V.layerData[data.defaultLayer];
    V.index = data.defaultLayer;
    var trace = {
      type: "scatter3d", mode: "markers", x: x, y: y, z: z,
      marker: { size: data.pointSize, color: layerColors(first), line: { width: 0 } },
      text: layerText(first), hovertemplate: "%{text}<br>x %{x:.2f}  y %{y:.2f}  z %{z:.2f} m<extra></extra>",
    };
    var layout = { margin: { l: 0, r: 0, t: 0, b: 0 }, showlegend: false, uirevision: "afov",
                   scene: { aspectmode: "manual", aspectratio: aspect(x, y, z), camera: V.camera,
                            dragmode: "turntable" } };
    var bgl = sceneLayout(data.background);
    layout.paper_bgcolor = bgl.paper_bgcolor;
    layout.scene.bgcolor = bgl["scene.bgcolor"];
    layout.scene.xaxis = bgl["scene.xaxis"];
    layout.scene.yaxis = bgl["scene.yaxis"];
    layout.scene.zaxis = bgl["scene.zaxis"];
    var config = { displaylogo: false, responsive: true, scrollZoom: true,
                   toImageButtonOptions: { filename: "scan", scale: 2 },
                   modeBarButtonsToRemove: ["sendChartToCloud", "downloadJson"] };

    var buttons = document.querySelectorAll("button.afov-layer");
    for (var b = 0; b < buttons.length; b++) {
      (function (k) { buttons[k].addEventListener("click", function () { setLayer(k); }); })(b);
    }
    document.addEventListener("keydown", function (ev) {
      var k = ev.key >= "1" && ev.key <= "9" ? Number(ev.key) - 1 : -1;
      if (k >= 0 && k < V.layers.length && !(ev.target && ev.target.tagName === "INPUT")) setLayer(k);
    });
    var size = document.getElementById("afov-size");
    size.value = String(data.pointSize);
    size.addEventListener("input", function () { Plotly.restyle(V.gd, { "marker.size": Number(size.value) }, [0]); });
    document.getElementById("afov-bg").addEventListener("click", function () {
      setBackground(V.background === "dark" ? "light" : "dark");
    });
    document.getElementById("afov-reset").addEventListener("click", function () {
      Plotly.relayout(V.gd, { "scene.camera": V.camera });
    });
    V.setLayer = setLayer;
    V.setBackground = setBackground;
    V.colors = function () { return V.gd.data[0].marker.color; };

    return Plotly.newPlot(V.gd, [trace], layout, config).then(function () {
      return setLayer(data.defaultLayer);
    }).then(function () {
      V.ready = true;
      document.body.dataset.ready = "1";
    });
  }

  try {
    init().catch(function (e) {
      V.error = String((e && e.stack) || e);
      console.error("afov viewer: " + V.error);
    });
  } catch (e) {
    V.error = String((e && e.stack) || e);
    console.error("afov viewer: " + V.error);
  }
})();
