// Keyboard-first review: every action has a key (see the ? overlay). No framework, no build step.
(() => {
  "use strict";
  const $ = (sel) => document.querySelector(sel);
  const csrf = document.querySelector('meta[name="csrf-token"]').content;
  const help = $("#help");
  const SVG = "http://www.w3.org/2000/svg";

  const showHelp = (on) => { help.hidden = !on; };
  document.querySelectorAll("[data-help]").forEach((b) => b.addEventListener("click", () => showHelp(help.hidden)));
  help.addEventListener("click", (e) => { if (e.target === help) showHelp(false); });

  const typing = (e) => /^(INPUT|SELECT|TEXTAREA)$/.test(e.target.tagName);

  // Shortcuts every page shares; a page's own handler runs first and may claim the key.
  let pageKeys = () => false;
  document.addEventListener("keydown", (e) => {
    if (e.ctrlKey || e.metaKey || e.altKey) return;
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
    pageKeys = (e) => (e.key === "Enter" ? (location.assign($("#start-review").href), true) : false);
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
  const fromServer = (list) => (list || []).map((b) => ({ box: b.box.slice(), cls: b.class, score: b.score }));
  const initial = fromServer(item.status === "done" ? item.labels : item.predictions);
  let boxes = fromServer(item.status === "done" ? item.labels : item.predictions);
  let selected = boxes.length ? 0 : -1;
  let mode = "view";
  let step = Math.max(1, Math.round(Math.min(W, H) / 100));
  let edits = [];
  let busy = false;

  const colour = (cls) => {
    const i = cfg.palette.indexOf(cls);
    return i < 0 ? 9 : i % 9;
  };
  const status = (text, bad) => { const s = $("#status"); s.textContent = text; s.classList.toggle("bad", !!bad); };

  function draw(svg, list, sel, withScore) {
    svg.replaceChildren();
    list.forEach((b, i) => {
      const [x1, y1, x2, y2] = b.box;
      const g = document.createElementNS(SVG, "g");
      g.setAttribute("class", `box cls-${colour(b.cls)}${i === sel ? " selected" : ""}`);
      const r = document.createElementNS(SVG, "rect");
      Object.entries({ x: x1, y: y1, width: x2 - x1, height: y2 - y1 }).forEach(([k, v]) => r.setAttribute(k, v));
      r.setAttribute("vector-effect", "non-scaling-stroke");
      const t = document.createElementNS(SVG, "text");
      t.setAttribute("x", x1 + 2);
      t.setAttribute("y", Math.max(y1 - 3, 10));
      t.setAttribute("font-size", Math.max(10, Math.round(H / 30)));
      t.textContent = withScore && b.score != null ? `${b.cls} ${b.score.toFixed(2)}` : b.cls;
      g.append(r, t);
      if (svg.id === "review-boxes") g.addEventListener("click", () => { selected = i; render(); });
      svg.append(g);
    });
  }

  function render() {
    draw($("#model-boxes"), fromServer(item.predictions), -1, true);
    draw($("#review-boxes"), boxes, selected, false);
    const list = $("#box-list");
    list.replaceChildren(...boxes.map((b, i) => {
      const li = document.createElement("li");
      li.className = `cls-${colour(b.cls)}${i === selected ? " selected" : ""}`;
      li.textContent = `${b.cls} [${b.box.map((v) => Math.round(v)).join(", ")}]`;
      return li;
    }));
    $("#mode").textContent = mode === "correct" ? `correct · step ${step}px` : "view";
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

  // -- correct mode: edits on the reviewer's copy of the boxes ------------------------------------
  const snapshot = () => edits.push({ boxes: boxes.map((b) => ({ ...b, box: b.box.slice() })), selected });
  const clamp = (v, lo, hi) => Math.min(hi, Math.max(lo, v));
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
  function setClass(n) {
    const cls = cfg.palette[n - 1];
    if (!cls || selected < 0) return;
    snapshot();
    boxes[selected].cls = cls;
  }
  function move(dx, dy) {
    if (selected < 0) return;
    snapshot();
    const b = boxes[selected].box, w = b[2] - b[0], h = b[3] - b[1];
    const x1 = clamp(b[0] + dx, 0, W - w), y1 = clamp(b[1] + dy, 0, H - h);
    boxes[selected].box = [x1, y1, x1 + w, y1 + h];
  }
  function resize(dw, dh) {
    if (selected < 0) return;
    snapshot();
    const b = boxes[selected].box;
    b[2] = clamp(b[2] + dw, b[0] + 2, W);
    b[3] = clamp(b[3] + dh, b[1] + 2, H);
  }
  function addBox() {
    snapshot();
    const w = Math.round(W / 5), h = Math.round(H / 5), x = Math.round((W - w) / 2), y = Math.round((H - h) / 2);
    boxes.push({ box: [x, y, x + w, y + h], cls: selected >= 0 ? boxes[selected].cls : cfg.palette[0] });
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

  const ARROWS = { ArrowLeft: [-1, 0], ArrowRight: [1, 0], ArrowUp: [0, -1], ArrowDown: [0, 1] };

  pageKeys = (e) => {
    const k = e.key;
    if (k === "Tab") { cycle(e.shiftKey ? -1 : 1); render(); return true; }
    if (mode === "correct") {
      if (/^[1-9]$/.test(k)) setClass(Number(k));
      else if (ARROWS[k]) (e.shiftKey ? resize : move)(ARROWS[k][0] * step, ARROWS[k][1] * step);
      else if (k === "n") addBox();
      else if (k === "x" || k === "Delete" || k === "Backspace") deleteBox();
      else if (k === "z") undoEdit();
      else if (k === "[") step = Math.max(1, Math.floor(step / 2));
      else if (k === "]") step = Math.min(256, step * 2);
      else if (k === "Enter") { decide("correct"); return true; }
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
        if (/^[1-9]$/.test(k) && cfg.editable) { enterCorrect(); setClass(Number(k)); render(); return true; }
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

  render();
})();
