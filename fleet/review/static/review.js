// Keyboard-first review with the mouse as a second hand: every action has a key (see the ? overlay).
// No framework, no build step; no inline script or style (the CSP allows neither).
(() => {
  "use strict";
  const $ = (sel) => document.querySelector(sel);
  const csrf = document.querySelector('meta[name="csrf-token"]').content;
  const help = $("#help");
  const SVG = "http://www.w3.org/2000/svg";

  document.querySelectorAll("#progress-bar").forEach((b) => { b.style.width = `${b.dataset.percent}%`; });
  const showHelp = (on) => { help.hidden = !on; };
  document.querySelectorAll("[data-help]").forEach((b) => b.addEventListener("click", () => showHelp(help.hidden)));
  help.addEventListener("click", (e) => { if (e.target === help) showHelp(false); });

  const typing = (e) => /^(INPUT|SELECT|TEXTAREA)$/.test(e.target.tagName) && e.target.type !== "checkbox";

  // Shortcuts every page shares; a page's own handler runs first and may claim the key. Tab is never taken:
  // it moves the focus through the navigation and the buttons as on any page.
  let pageKeys = () => false;
  document.addEventListener("keydown", (e) => {
    if (e.ctrlKey || e.metaKey || e.key === "Tab") return;
    if (!help.hidden) {
      if (e.key === "Escape" || e.key === "?") { showHelp(false); e.preventDefault(); }
      return;
    }
    if (typing(e)) return;
    if (e.key === "?") { showHelp(true); e.preventDefault(); return; }
    if (pageKeys(e)) e.preventDefault();
  });

  const page = document.body.dataset.page;
  if (page === "queue") {
    pageKeys = (e) => (e.key === "Enter" && e.target === document.body
      ? (location.assign($("#start-review").href), true) : false);
    return;
  }
  if (page === "empty") {
    pageKeys = (e) => (e.key === "k" && $("#prev-link") ? (location.assign($("#prev-link").href), true) : false);
    return;
  }
  if (page !== "review") return;

  const cfg = JSON.parse($("#item-data").textContent);
  const item = cfg.item;
  const W = item.width, H = item.height;
  const COLOURS = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#1a9ab5", "#f032e6", "#7a9a22", "#c26d8b",
    "#5b6673"];
  const fromServer = (list) => (list || []).map((b) => ({ box: b.box.slice(), cls: b.class, score: b.score }));
  const initial = fromServer(item.status === "done" ? item.labels : item.predictions);
  let boxes = fromServer(item.status === "done" ? item.labels : item.predictions);
  let selected = boxes.length ? 0 : -1;
  let mode = "view";
  let step = Math.max(1, Math.round(Math.min(W, H) / 100));
  let edits = [];
  let busy = false;
  let scale = 1; // screen px per image px
  let drawClass = cfg.palette[0];
  const view = { model: item.status === "done", review: true, side: false };

  const colourOf = (cls) => { const i = cfg.palette.indexOf(cls); return COLOURS[i < 0 ? 9 : i % 9]; };
  const status = (text, bad) => { const s = $("#status"); s.textContent = text; s.classList.toggle("bad", !!bad); };
  const clamp = (v, lo, hi) => Math.min(hi, Math.max(lo, v));

  // -- the canvas: one large frame, fitted to the window; layers drawn in image pixels ---------------------
  function fit() {
    const stages = $("#stages");
    const n = view.side ? 2 : 1;
    const availW = (stages.clientWidth - (n - 1) * 12) / n;
    const availH = Math.max(240, window.innerHeight - stages.getBoundingClientRect().top - 12);
    scale = Math.min(availW / W, availH / H);
    document.querySelectorAll(".stage").forEach((st) => {
      st.style.width = `${Math.floor(W * scale)}px`;
      st.style.height = `${Math.floor(H * scale)}px`;
    });
    document.body.classList.toggle("upscaled", scale >= 2); // tiny frames: crisp pixels; never when shrinking
    render();
  }

  const measure = document.createElement("canvas").getContext("2d");
  const LABEL_PX = 13; // on screen, whatever the frame's size

  function label(g, text, colour, x1, y1, x2, y2) {
    // A filled tag above the box, or inside its top when there is no room; always inside the image.
    measure.font = `600 ${LABEL_PX}px system-ui, sans-serif`;
    const pad = 3 / scale, h = (LABEL_PX + 5) / scale;
    const w = Math.min(W, measure.measureText(text).width / scale + 2 * pad);
    const x = clamp(x1, 0, W - w);
    const y = clamp(y1 - h >= 0 ? y1 - h : y1, 0, Math.max(0, H - h));
    const bg = document.createElementNS(SVG, "rect");
    Object.entries({ x, y, width: w, height: h, fill: colour, class: "label-bg" }).forEach(([k, v]) => bg.setAttribute(k, v));
    const t = document.createElementNS(SVG, "text");
    Object.entries({ x: x + pad, y: y + h - 5 / scale, "font-size": LABEL_PX / scale, fill: "#fff", class: "label" })
      .forEach(([k, v]) => t.setAttribute(k, v));
    t.textContent = text;
    g.append(bg, t);
  }

  function draw(svg, list, sel, kind) {
    svg.replaceChildren();
    list.forEach((b, i) => {
      const [x1, y1, x2, y2] = b.box;
      const g = document.createElementNS(SVG, "g");
      g.setAttribute("class", `box ${kind}${i === sel ? " selected" : ""}`);
      const r = document.createElementNS(SVG, "rect");
      Object.entries({ x: x1, y: y1, width: Math.max(0, x2 - x1), height: Math.max(0, y2 - y1), stroke: colourOf(b.cls),
        class: "outline", "vector-effect": "non-scaling-stroke" }).forEach(([k, v]) => r.setAttribute(k, v));
      g.append(r);
      const text = b.score != null ? `${b.cls} ${b.score.toFixed(2)}` : b.cls;
      if (kind === "model") label(g, text, colourOf(b.cls), x1, y2 + (LABEL_PX + 5) / scale, x2, y2); // below: no clash
      else label(g, text, colourOf(b.cls), x1, y1, x2, y2);
      if (kind === "review" && i === sel && mode === "correct") {
        const hs = 7 / scale;
        [[x1, y1], [x2, y1], [x1, y2], [x2, y2]].forEach(([hx, hy]) => {
          const h = document.createElementNS(SVG, "rect");
          Object.entries({ x: hx - hs / 2, y: hy - hs / 2, width: hs, height: hs, class: "handle" })
            .forEach(([k, v]) => h.setAttribute(k, v));
          g.append(h);
        });
      }
      svg.append(g);
    });
  }

  function render() {
    const predictions = fromServer(item.predictions);
    draw($("#model-boxes"), predictions, -1, "model");
    draw($("#model-side"), predictions, -1, "model");
    draw($("#review-boxes"), boxes, selected, "review");
    $("#model-boxes").classList.toggle("hidden", !view.model || view.side);
    $("#review-boxes").classList.toggle("hidden", !view.review);
    $("#show-model").checked = view.model;
    $("#show-review").checked = view.review;
    $("#side-by-side").checked = view.side;
    document.body.classList.toggle("side-by-side", view.side);
    const list = $("#box-list");
    list.replaceChildren(...boxes.map((b, i) => {
      const li = document.createElement("li");
      li.className = i === selected ? "selected" : "";
      li.style.color = colourOf(b.cls);
      li.textContent = `${b.cls} [${b.box.map((v) => Math.round(v)).join(", ")}]`;
      li.addEventListener("click", () => { selected = i; render(); });
      return li;
    }));
    $("#mode").textContent = mode === "correct" ? `correct · step ${step}px · new boxes: ${drawClass}` : "view";
    document.body.classList.toggle("correcting", mode === "correct");
  }

  function setProgress(p) {
    const bar = $("#progress-bar");
    if (!bar || !p) return;
    bar.style.width = `${p.percent}%`;
    bar.setAttribute("aria-valuenow", p.done);
    $("#progress-text").textContent = `${p.done} / ${p.quota} today`;
  }

  async function post(path, body) {
    const r = await fetch(path, {
      method: "POST", credentials: "same-origin",
      headers: { "Content-Type": "application/json", Accept: "application/json", "X-CSRF-Token": csrf },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const data = await r.json().catch(() => ({}));
    if (!r.ok) {
      const detail = Array.isArray(data.detail)
        ? data.detail.map((d) => `${d.loc.join(".")}: ${d.msg}`).join("; ") : data.detail || r.statusText;
      throw new Error(detail);
    }
    return data;
  }

  async function run(fn) {
    if (busy) return;
    busy = true;
    try { await fn(); } catch (err) { status(String(err.message || err), true); busy = false; }
  }

  const decide = (action) => run(async () => {
    const body = action === "correct"
      ? { boxes: boxes.map((b) => ({ box: b.box.map((v) => Math.round(v * 100) / 100), class: b.cls })) }
      : undefined;
    const data = await post(`/api/items/${encodeURIComponent(item.id)}/${action}`, body);
    setProgress(data.progress);
    status(`${data.item.decision}`);
    location.assign(data.next);
  });
  const undo = () => run(async () => { const data = await post("/api/undo"); location.assign(data.next); });
  const next = () => run(async () => {
    if (item.status === "pending" && cfg.editable) await post(`/api/items/${encodeURIComponent(item.id)}/skip`);
    location.assign(cfg.next);
  });
  const prev = () => { if (cfg.prev) location.assign(cfg.prev); };

  // -- correct mode: edits on the reviewer's copy of the boxes ---------------------------------------------
  const snapshot = () => edits.push({ boxes: boxes.map((b) => ({ ...b, box: b.box.slice() })), selected });
  function enterCorrect() {
    if (!cfg.editable || mode === "correct") return;
    mode = "correct";
    edits = [];
    render();
  }
  function leaveCorrect() {
    mode = "view";
    boxes = initial.map((b) => ({ ...b, box: b.box.slice() }));
    selected = boxes.length ? 0 : -1;
    render();
  }
  function setClass(cls) {
    if (!cls) return;
    drawClass = cls;
    if (selected < 0) return;
    snapshot();
    boxes[selected].cls = cls;
    boxes[selected].score = null;
  }
  const edited = (b) => { b.score = null; };
  function move(dx, dy) {
    if (selected < 0) return;
    snapshot();
    const b = boxes[selected].box, w = b[2] - b[0], h = b[3] - b[1];
    const x1 = clamp(b[0] + dx, 0, W - w), y1 = clamp(b[1] + dy, 0, H - h);
    boxes[selected].box = [x1, y1, x1 + w, y1 + h];
    edited(boxes[selected]);
  }
  function resize(dw, dh, near) {
    if (selected < 0) return;
    snapshot();
    const b = boxes[selected].box;
    if (near) { // the left / top edge
      b[0] = clamp(b[0] + dw, 0, b[2] - 2);
      b[1] = clamp(b[1] + dh, 0, b[3] - 2);
    } else {
      b[2] = clamp(b[2] + dw, b[0] + 2, W);
      b[3] = clamp(b[3] + dh, b[1] + 2, H);
    }
    edited(boxes[selected]);
  }
  function addBox() {
    snapshot();
    const w = Math.round(W / 5), h = Math.round(H / 5), x = Math.round((W - w) / 2), y = Math.round((H - h) / 2);
    boxes.push({ box: [x, y, x + w, y + h], cls: selected >= 0 ? boxes[selected].cls : drawClass });
    selected = boxes.length - 1;
  }
  function deleteBox() {
    if (selected < 0) return;
    snapshot();
    boxes.splice(selected, 1);
    selected = Math.min(selected, boxes.length - 1);
  }
  function undoEdit() {
    const last = edits.pop();
    if (last) { boxes = last.boxes; selected = last.selected; }
  }
  const cycle = (d) => { if (boxes.length) selected = (selected + d + boxes.length) % boxes.length; };

  // -- the mouse: draw on empty frame, drag a box to move it, an edge or corner to resize it ---------------
  const svg = $("#review-boxes");
  let drag = null;
  const toImage = (e) => {
    const r = svg.getBoundingClientRect();
    return { x: clamp((e.clientX - r.left) * W / r.width, 0, W), y: clamp((e.clientY - r.top) * H / r.height, 0, H) };
  };
  function hit(p) {
    const tol = 6 / scale;
    const order = boxes.map((_, i) => i);
    if (selected >= 0) order.unshift(order.splice(selected, 1)[0]); // the selected box wins ties
    for (const i of order) {
      const [x1, y1, x2, y2] = boxes[i].box;
      if (p.x < x1 - tol || p.x > x2 + tol || p.y < y1 - tol || p.y > y2 + tol) continue;
      let edge = "";
      if (Math.abs(p.y - y1) <= tol) edge += "n"; else if (Math.abs(p.y - y2) <= tol) edge += "s";
      if (Math.abs(p.x - x1) <= tol) edge += "w"; else if (Math.abs(p.x - x2) <= tol) edge += "e";
      if (edge || (p.x >= x1 && p.x <= x2 && p.y >= y1 && p.y <= y2)) return { i, edge: edge || "move" };
    }
    return null;
  }
  const CURSOR = { n: "ns-resize", s: "ns-resize", e: "ew-resize", w: "ew-resize", nw: "nwse-resize", se: "nwse-resize",
    ne: "nesw-resize", sw: "nesw-resize", move: "move" };
  if (cfg.editable) {
    svg.addEventListener("pointerdown", (e) => {
      if (e.button !== 0 || !view.review) return;
      const p = toImage(e);
      enterCorrect();
      snapshot();
      const h = hit(p);
      if (h) {
        selected = h.i;
        drag = { kind: h.edge, start: p, orig: boxes[h.i].box.slice() };
      } else {
        boxes.push({ box: [p.x, p.y, p.x, p.y], cls: drawClass });
        selected = boxes.length - 1;
        drag = { kind: "draw", start: p };
      }
      svg.setPointerCapture(e.pointerId);
      e.preventDefault();
      render();
    });
    svg.addEventListener("pointermove", (e) => {
      const p = toImage(e);
      if (!drag) {
        const h = mode === "correct" || cfg.editable ? hit(p) : null;
        svg.style.cursor = h ? CURSOR[h.edge] : "crosshair";
        return;
      }
      const b = boxes[selected];
      if (drag.kind === "draw") {
        b.box = [Math.min(drag.start.x, p.x), Math.min(drag.start.y, p.y), Math.max(drag.start.x, p.x),
          Math.max(drag.start.y, p.y)];
      } else if (drag.kind === "move") {
        const [x1, y1, x2, y2] = drag.orig, w = x2 - x1, h = y2 - y1;
        const nx = clamp(x1 + p.x - drag.start.x, 0, W - w), ny = clamp(y1 + p.y - drag.start.y, 0, H - h);
        b.box = [nx, ny, nx + w, ny + h];
      } else {
        const nb = drag.orig.slice();
        if (drag.kind.includes("w")) nb[0] = Math.min(p.x, nb[2] - 2);
        if (drag.kind.includes("e")) nb[2] = Math.max(p.x, nb[0] + 2);
        if (drag.kind.includes("n")) nb[1] = Math.min(p.y, nb[3] - 2);
        if (drag.kind.includes("s")) nb[3] = Math.max(p.y, nb[1] + 2);
        b.box = nb;
      }
      edited(b);
      render();
    });
    const end = () => {
      if (!drag) return;
      const b = boxes[selected].box;
      if (drag.kind === "draw" && (b[2] - b[0] < 3 || b[3] - b[1] < 3)) { // a click, not a box: just deselect
        boxes.pop();
        edits.pop();
        selected = -1;
      } else if (drag.kind !== "draw" && b.every((v, k) => v === drag.orig[k])) {
        edits.pop(); // a click on a box selects it; no edit to undo
      }
      boxes.forEach((x) => { x.box = x.box.map((v) => Math.round(v * 100) / 100); });
      drag = null;
      render();
    };
    svg.addEventListener("pointerup", end);
    svg.addEventListener("pointercancel", end);
  }

  // -- the class picker: any number of classes, type to filter -----------------------------------------------
  const filter = $("#class-filter");
  const classButtons = [...document.querySelectorAll("#class-list button")];
  const visibleClasses = () => classButtons.filter((b) => !b.parentElement.hidden);
  const pick = (cls) => { if (!cfg.editable) return; enterCorrect(); setClass(cls); render(); };
  classButtons.forEach((b) => b.addEventListener("click", () => pick(b.dataset.class)));
  filter.addEventListener("input", () => {
    const q = filter.value.trim().toLowerCase();
    classButtons.forEach((b) => { b.parentElement.hidden = !!q && !b.dataset.class.toLowerCase().includes(q); });
    const first = visibleClasses()[0];
    classButtons.forEach((b) => b.classList.toggle("first", b === first && !!q));
  });
  filter.addEventListener("keydown", (e) => {
    if (e.key === "Enter") {
      const first = visibleClasses()[0];
      if (first) pick(first.dataset.class);
      filter.value = "";
      filter.dispatchEvent(new Event("input"));
      filter.blur();
      e.preventDefault();
    } else if (e.key === "Escape") {
      filter.value = "";
      filter.dispatchEvent(new Event("input"));
      filter.blur();
      e.preventDefault();
    } else if (e.key === "ArrowDown") {
      const first = visibleClasses()[0];
      if (first) { first.focus(); e.preventDefault(); }
    }
  });

  const ARROWS = { ArrowLeft: [-1, 0], ArrowRight: [1, 0], ArrowUp: [0, -1], ArrowDown: [0, 1] };
  const toggle = (k) => { view[k] = !view[k]; fit(); };
  [["#show-model", "model"], ["#show-review", "review"], ["#side-by-side", "side"]].forEach(([sel, k]) =>
    $(sel).addEventListener("change", (e) => { view[k] = e.target.checked; fit(); }));

  pageKeys = (e) => {
    const k = e.key;
    if (e.altKey && !ARROWS[k]) return false;
    if (k === "p") { toggle("model"); return true; }
    if (k === "l") { toggle("review"); return true; }
    if (k === "b") { toggle("side"); return true; }
    if (k === "/") { if (cfg.editable) filter.focus(); return true; }
    if (k === "." || k === ",") { cycle(k === "." ? 1 : -1); render(); return true; }
    if (mode === "correct") {
      if (/^[1-9]$/.test(k)) setClass(cfg.palette[Number(k) - 1]);
      else if (ARROWS[k]) {
        const [dx, dy] = ARROWS[k];
        if (e.shiftKey) resize(dx * step, dy * step, false);
        else if (e.altKey) resize(dx * step, dy * step, true);
        else move(dx * step, dy * step);
      } else if (k === "n") addBox();
      else if (k === "x" || k === "Delete" || k === "Backspace") deleteBox();
      else if (k === "z") undoEdit();
      else if (k === "[") step = Math.max(1, Math.floor(step / 2));
      else if (k === "]") step = Math.min(256, step * 2);
      else if (k === "Enter") { if (e.target.tagName !== "BUTTON") decide("correct"); return e.target.tagName !== "BUTTON"; }
      else if (k === "Escape") leaveCorrect();
      else return false;
      render();
      return true;
    }
    switch (k) {
      case "a": if (cfg.editable) decide("approve"); return true;
      case "r": if (cfg.editable) decide("reject"); return true;
      case "c": enterCorrect(); return true;
      case "j": next(); return true;
      case "k": prev(); return true;
      case "z": undo(); return true;
      default:
        if (/^[1-9]$/.test(k) && cfg.editable) { enterCorrect(); setClass(cfg.palette[Number(k) - 1]); render(); return true; }
        return false;
    }
  };

  document.querySelectorAll("[data-act]").forEach((btn) => btn.addEventListener("click", () => {
    const act = btn.dataset.act;
    if (act === "approve" || act === "reject") decide(act);
    else if (act === "edit") enterCorrect();
    else if (act === "save") decide("correct");
    else if (act === "prev") prev();
    else if (act === "next") next();
    else if (act === "undo") undo();
  }));

  window.addEventListener("resize", fit);
  if ($("#frame").complete) fit(); else $("#frame").addEventListener("load", fit);
  fit();
})();
