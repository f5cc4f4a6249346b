// The page: one tab per bundle, panels built from /api/bundles (see runtime/app/describe.py).
"use strict";

let INFO = null;

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else if (v !== undefined && v !== null && v !== false) e.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) if (c !== null && c !== undefined) e.append(c);
  return e;
}

function label(name) { return name.replace(/_/g, " "); }

// ---- source editors: a caption, attribute controls, or a JSON vector -----------------------------
function sourceEditor(d, key, opts = {}) {
  if (d.source_kind === "text") {
    const input = opts.multiline
      ? el("textarea", {rows: 3, name: key, "aria-label": opts.title || "captions"}, opts.value ?? d.example)
      : el("input", {type: "text", name: key, value: opts.value ?? d.example, "aria-label": opts.title || "caption"});
    const wrap = el("label", {class: "field"}, el("span", {}, opts.title || "Caption"), input);
    return {el: wrap, value: () => opts.multiline
      ? (() => { const l = input.value.split("\n").filter(s => s.trim()); return l.length ? l : [input.value]; })()
      : input.value,
      set: v => { input.value = v; }};
  }
  if (d.attributes) {
    const box = el("fieldset", {class: "attrs", "data-editor": key}, el("legend", {}, opts.title || "Attributes"));
    const inputs = {};
    for (const g of d.attributes.groups) {
      if (g.one_hot) {
        const chips = el("div", {class: "chips"});
        for (const m of g.members) {
          const r = el("input", {type: "radio", name: `${d.task}-${key}-${g.name}`, value: m, "data-attr": m});
          inputs[m] = r;
          chips.append(el("label", {class: "chip"}, r, label(m.startsWith(g.name + "_") ? m.slice(g.name.length + 1) : m)));
        }
        box.append(el("div", {class: "group"}, el("span", {class: "gname"}, label(g.name)), chips));
      } else {
        const c = el("input", {type: "checkbox", "data-attr": g.name});
        inputs[g.name] = c;
        box.append(el("label", {class: "chip single"}, c, label(g.name)));
      }
    }
    const set = v => { for (const [n, i] of Object.entries(inputs)) i.checked = Number(v[n]) > 0.5; };
    set(opts.value ?? d.attributes.example);
    return {el: box, set, value: () => Object.fromEntries(Object.entries(inputs).map(([n, i]) => [n, i.checked ? 1 : 0]))};
  }
  const text = opts.value ?? (opts.multiline ? d.example : JSON.stringify(JSON.parse(d.example)[0]));
  const area = el("textarea", {rows: 3, class: "mono", name: key, "aria-label": opts.title || "condition JSON"}, text);
  return {el: el("label", {class: "field"}, el("span", {}, opts.title ||
            `Conditions: JSON list of vectors of ${d.cond_shape.join("×")} numbers`), area),
          set: v => { area.value = JSON.stringify(v); },
          value: () => { try { return JSON.parse(area.value); } catch (e) { throw new Error(`not valid JSON: ${e.message}`); } }};
}

// ---- requests with a busy state, latency and errors ------------------------------------------------
async function call(panel, button, url, body) {
  const out = panel.querySelector(".result"), status = panel.querySelector(".status");
  button.disabled = true; panel.classList.add("busy"); out.setAttribute("aria-busy", "true");
  status.className = "status"; status.textContent = "Working…";
  const t0 = performance.now();
  try {
    const init = body instanceof FormData ? {method: "POST", body}
      : {method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(body)};
    const res = await fetch(url, init);
    let data;
    try { data = await res.json(); } catch { data = {error: `the server answered ${res.status} ${res.statusText}`}; }
    if (!res.ok || data.error) throw new Error(data.error || `HTTP ${res.status}`);
    const rt = performance.now() - t0;
    status.textContent = `${data.latency_ms.toFixed(1)} ms to compute · ${rt.toFixed(0)} ms round trip`;
    status.classList.add("latency");
    return data;
  } catch (e) {
    status.textContent = e.message; status.classList.add("error"); status.setAttribute("role", "alert");
    out.replaceChildren();                       // an old result under a new error would read as its answer
    return null;
  } finally {
    button.disabled = false; panel.classList.remove("busy"); out.setAttribute("aria-busy", "false");
    answered(panel);
  }
}

// counts finished calls, so a test (or a user script) can wait for the next answer
function answered(panel) { panel.dataset.answers = String(Number(panel.dataset.answers || 0) + 1); }

function fail(panel, message) {
  const status = panel.querySelector(".status");
  status.textContent = message; status.className = "status error"; status.setAttribute("role", "alert");
  panel.querySelector(".result").replaceChildren();
  answered(panel);
}

function img(src, d, title) {
  const px = d.image ? Math.max(96, Math.min(192, d.image[1] * 2)) : 128;
  return el("img", {src, title, alt: title, width: px, height: px, class: d.image && d.image[1] < 96 ? "pixel" : ""});
}

function figure(src, d, caption) { return el("figure", {}, img(src, d, caption), el("figcaption", {}, caption)); }

function panel(title, hint, ...body) {
  return el("section", {class: "panel"}, el("h3", {}, title), hint ? el("p", {class: "hint"}, hint) : null, ...body,
            el("div", {class: "status", "aria-live": "polite"}), el("div", {class: "result", "aria-busy": "false"}));
}

function fileInput(name, onChange) {
  const input = el("input", {type: "file", accept: "image/*", name});
  const thumb = el("img", {class: "thumb", alt: "", hidden: true});
  thumb.addEventListener("error", () => { thumb.hidden = true; });      // not an image the browser can show
  input.addEventListener("change", () => {
    const f = input.files[0];
    if (f && f.type.startsWith("image/")) { thumb.src = URL.createObjectURL(f); thumb.hidden = false; }
    else thumb.hidden = true;
    if (onChange) onChange(f);
  });
  return {input, thumb, el: el("div", {class: "upload"}, input, thumb)};
}

function tooBig(files) {
  const limit = INFO.max_upload_mb * 1048576;
  const total = files.reduce((s, f) => s + (f ? f.size : 0), 0);
  return total > limit ? `upload too large (${(total / 1048576).toFixed(1)} MB); the limit is ${INFO.max_upload_mb} MB` : null;
}

async function setFile(input, dataUrl, name) {
  const blob = await (await fetch(dataUrl)).blob();
  const dt = new DataTransfer();
  dt.items.add(new File([blob], name, {type: "image/png"}));
  input.files = dt.files;
  input.dispatchEvent(new Event("change"));
}

// ---- panels --------------------------------------------------------------------------------------
// hooks: {edit, a, b}(url, source, seed) put a sample into the edit panel or a transfer side
function samplePanel(d, hooks) {
  const src = sourceEditor(d, "sample", {multiline: !d.attributes,
    title: d.source_kind === "text" ? "Captions (one per line)" : undefined});
  const n = el("input", {type: "number", name: "num_samples", min: 1, max: 16, value: d.has_decoder ? 4 : 2});
  const seed = el("input", {type: "number", name: "seed", min: 0, value: 0});
  const temp = el("input", {type: "number", name: "temperature", min: 0.05, max: 10, step: 0.05, value: d.temperature ?? 1.0});
  const button = el("button", {class: "primary", "data-action": "sample"}, d.has_decoder ? "Generate" : "Translate");
  const p = panel(d.has_decoder ? "Sample" : "Latents",
    d.has_decoder ? "Draw samples of the target for a source." + (hooks ? " Send a sample to the edit or " +
                    "transfer panel with the links under it." : "")
                  : "This bundle has no decoder: it returns the target latents zΘ.",
    src.el, el("div", {class: "row"}, el("label", {class: "field small"}, el("span", {}, "Samples"), n),
      el("label", {class: "field small"}, el("span", {}, "Seed"), seed),
      el("label", {class: "field small"}, el("span", {}, "Temperature"), temp), button));
  button.addEventListener("click", async () => {
    let sources;
    try { sources = d.attributes ? [src.value()] : src.value(); } catch (e) { return fail(p, e.message); }
    if (!d.attributes && d.source_kind === "vector" && Array.isArray(sources) && sources.every(x => typeof x === "number"))
      sources = [sources];                                   // one vector typed without the outer list
    const body = {sources, num_samples: Number(n.value), seed: Number(seed.value), temperature: Number(temp.value)};
    const data = await call(p, button, `/api/${d.task}/sample`, body);
    if (!data) return;
    const out = p.querySelector(".result"); out.replaceChildren();
    if (data.latents) { out.append(el("pre", {class: "latents"},
      "[\n" + data.latents.map(r => "  [" + r.map(x => x.toFixed(6)).join(", ") + "]").join(",\n") + "\n]")); return; }
    const grid = el("div", {class: "grid", style: `grid-template-columns: repeat(${data.cols}, max-content)`});
    data.images.forEach((u, k) => {
      const row = Math.floor(k / data.cols), source = sources[Math.min(row, sources.length - 1)];
      const links = hooks ? Object.entries({edit: "edit", a: "A", b: "B"}).map(([h, text]) =>
        el("button", {class: "link", "data-use": h, title: h === "edit" ? "edit this sample" : `use as image ${text}`,
                      onclick: () => hooks[h](u, source, data.seeds[k])}, text)) : [];
      grid.append(el("figure", {}, img(u, d, `seed ${data.seeds[k]}`),
                     el("figcaption", {}, `seed ${data.seeds[k]}`, ...links)));
    });
    out.append(grid);
  });
  return p;
}

function editPanel(d) {
  const file = fileInput("image");
  const src = sourceEditor(d, "source", {title: "The image shows"});
  const changed = sourceEditor(d, "new_source", {title: "Change it to",
    value: d.source_kind === "text" ? d.example.replace("red", "blue") : undefined});
  const button = el("button", {class: "primary", "data-action": "edit"}, "Edit");
  const p = panel("Edit your image", `Upload any image (it is centre-cropped and resized to ${d.image[0]}×${d.image[1]}), ` +
    "describe it, then choose what to change.", file.el, el("div", {class: "cols"}, src.el, changed.el), button);
  button.addEventListener("click", async () => {
    const f = file.input.files[0];
    if (!f) return fail(p, "choose an image file first");
    const big = tooBig([f]); if (big) return fail(p, big);
    const form = new FormData();
    try { form.append("image", f); form.append("source", JSON.stringify(src.value()));
          form.append("new_source", JSON.stringify(changed.value())); } catch (e) { return fail(p, e.message); }
    const data = await call(p, button, `/api/${d.task}/edit`, form);
    if (!data) return;
    p.querySelector(".result").replaceChildren(el("div", {class: "trio"}, figure(data.input, d, "your image"),
      figure(data.reconstruction, d, "reconstruction"), figure(data.edited, d, "edited")));
  });
  p.useSample = async (url, source, seed) => {
    await setFile(file.input, url, `${d.task}-seed${seed}.png`);
    src.set(source);
    p.scrollIntoView({behavior: "smooth", block: "start"});
  };
  return p;
}

function transferPanel(d) {
  const sides = ["a", "b"].map((k, i) => ({k, file: fileInput(`image_${k}`),
    src: sourceEditor(d, `source_${k}`, {title: `Image ${k.toUpperCase()} shows`,
      value: d.source_kind === "text" && i ? d.example.replace("red", "blue") : undefined})}));
  const button = el("button", {class: "primary", "data-action": "transfer"}, "Transfer");
  const use = s => async (url, source, seed) => {
    await setFile(s.file.input, url, `${d.task}-seed${seed}.png`);
    s.src.set(source);
    p.scrollIntoView({behavior: "smooth", block: "start"});
  };
  const p = panel("Exemplar transfer", "Two images and what each shows: every image is redrawn under both " +
    "descriptions, keeping what its description leaves open (the residual v = τ⁻¹).",
    el("div", {class: "cols"}, ...sides.map(s => el("div", {class: "side"},
      el("h4", {}, `Image ${s.k.toUpperCase()}`), s.file.el, s.src.el))), button);
  button.addEventListener("click", async () => {
    const files = sides.map(s => s.file.input.files[0]);
    if (!files.every(Boolean)) return fail(p, "choose both images first");
    const big = tooBig(files); if (big) return fail(p, big);
    const form = new FormData();
    try { sides.forEach((s, i) => { form.append(`image_${s.k}`, files[i]); form.append(`source_${s.k}`, JSON.stringify(s.src.value())); }); }
    catch (e) { return fail(p, e.message); }
    const data = await call(p, button, `/api/${d.task}/transfer`, form);
    if (!data) return;
    const head = ["input", "with A's description", "with B's description"].map(t => el("div", {class: "gh"}, t));
    const grid = el("div", {class: "tgrid"}, ...head);
    data.grid.forEach((row, i) => grid.append(figure(data.inputs[i], d, `image ${"AB"[i]}`),
      ...row.map((u, j) => figure(u, d, i === j ? "reconstruction" : `${"AB"[i]} with ${"AB"[j]}'s`))));
    p.querySelector(".result").replaceChildren(grid);
  });
  p.useA = use(sides[0]); p.useB = use(sides[1]);
  return p;
}

function bundleView(d) {
  const meta = d.error ? "" : [`${d.source_kind} source`, d.image ? `${d.image[0]}×${d.image[1]} images` : "latents only",
                `latent ${d.latent_dim}`, d.backend].filter(Boolean).join(" · ");
  const sec = el("article", {class: "bundle", id: `bundle-${d.task}`, "data-task": d.task, role: "tabpanel"},
    el("h2", {}, d.task, el("span", {class: "meta"}, meta)),
    ...d.warnings.map(w => el("p", {class: "warning"}, `⚠ ${w}`)));
  if (d.error) { sec.append(el("p", {class: "status error"}, `This bundle could not be opened: ${d.error}`)); return sec; }
  if (d.source_kind === "image") {
    sec.append(el("p", {class: "hint"}, "Image-source bundles are not on this page yet; use " +
      "python -m runtime translate BUNDLE --image FILE."));
    return sec;
  }
  const edit = d.can_edit ? editPanel(d) : null, transfer = d.can_edit ? transferPanel(d) : null;
  sec.append(samplePanel(d, edit && {edit: edit.useSample, a: transfer.useA, b: transfer.useB}));
  if (edit) sec.append(edit, transfer);
  return sec;
}

function show(task) {
  for (const b of document.querySelectorAll(".bundle")) b.hidden = b.dataset.task !== task;
  for (const t of document.querySelectorAll("#tabs button")) t.setAttribute("aria-selected", t.dataset.task === task);
  history.replaceState(null, "", `#${task}`);
}

async function main() {
  const main = document.getElementById("bundles");
  try {
    INFO = await (await fetch("/api/bundles")).json();
  } catch (e) { main.replaceChildren(el("p", {class: "status error"}, `cannot reach the server: ${e.message}`)); return; }
  document.getElementById("engine").textContent = INFO.engine;
  main.replaceChildren(...INFO.bundles.map(bundleView));
  document.getElementById("tabs").replaceChildren(...INFO.bundles.map(d =>
    el("button", {role: "tab", "data-task": d.task, onclick: () => show(d.task)}, d.task)));
  const want = location.hash.slice(1);
  show(INFO.bundles.some(d => d.task === want) ? want : INFO.bundles[0].task);
  document.body.dataset.ready = "1";
}

main();
