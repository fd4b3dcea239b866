// Wardrobe Mini App: plain ES module, no build step. Talks to /api/v1 on the same origin.

const API = "/api/v1";
const PAGE = 24;
const MAX_SIDE = 1600; // uploads are downscaled to this before they leave the phone
const TELEGRAM_JS = "https://telegram.org/js/telegram-web-app.js";
const CATEGORIES = ["top", "bottom", "dress", "outerwear", "shoes", "bag", "accessory"];
const SEASONS = ["summer", "winter", "demi-season", "all-season"];
const STYLES = ["casual", "business", "sport", "evening", "streetwear", "classic", "romantic", "minimalist", "boho"];
const OCCASIONS = ["everyday", "work", "date", "party", "sport", "travel", "formal"];
const THEME_VARS = {
  bg_color: "--bg",
  secondary_bg_color: "--bg2",
  section_bg_color: "--card",
  header_bg_color: "--header",
  text_color: "--text",
  hint_color: "--hint",
  link_color: "--link",
  button_color: "--accent",
  button_text_color: "--accent-text",
  destructive_text_color: "--danger",
};

const $ = (selector, root = document) => root.querySelector(selector);
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const NOUNS = { bottom: "bottoms", accessory: "accessory" };
const label = (value) => (value ? value.charAt(0).toUpperCase() + value.slice(1).replace("-", " ") : "");

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "dataset") Object.assign(node.dataset, value);
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (key in node && typeof value !== "string") node[key] = value;
    else node.setAttribute(key, value === true ? "" : value);
  }
  node.append(...children.flat().filter((c) => c !== null && c !== undefined && c !== false));
  return node;
}

// --- Telegram: sign-in data, theme, and the SDK only when we really are inside Telegram -------------------------

const hashParams = new URLSearchParams(location.hash.slice(1));

function insideTelegram() {
  if (hashParams.has("tgWebAppPlatform") || hashParams.has("tgWebAppVersion") || window.TelegramWebviewProxy) {
    return true;
  }
  try {
    return window.parent !== window; // Telegram Web frames the Mini App
  } catch {
    return true;
  }
}

function loadTelegram() {
  return new Promise((resolve) => {
    const script = el("script", { src: TELEGRAM_JS });
    const done = () => resolve(window.Telegram?.WebApp ?? null);
    script.addEventListener("load", done);
    script.addEventListener("error", done);
    setTimeout(done, 4000); // a slow network must not keep the wardrobe from showing
    document.head.append(script);
  });
}

function readInitData(tg) {
  if (tg?.initData) return tg.initData;
  const fromHash = hashParams.get("tgWebAppData");
  try {
    // Telegram passes it once in the fragment; keep it for reloads and in-app navigation within this tab.
    if (fromHash) sessionStorage.setItem("wardrobe:initData", fromHash);
    return fromHash || sessionStorage.getItem("wardrobe:initData") || "";
  } catch {
    return fromHash || "";
  }
}

function userIdOf(initData) {
  try {
    const id = JSON.parse(new URLSearchParams(initData).get("user") || "null")?.id;
    return Number.isSafeInteger(id) ? String(id) : null;
  } catch {
    return null;
  }
}

function applyTheme(params) {
  if (!params) return;
  for (const [key, variable] of Object.entries(THEME_VARS)) {
    const value = params[key];
    if (typeof value === "string" && /^#[0-9a-f]{3,8}$/i.test(value)) {
      document.documentElement.style.setProperty(variable, value);
    }
  }
}

function themeFromHash() {
  try {
    return JSON.parse(hashParams.get("tgWebAppThemeParams") || "null");
  } catch {
    return null;
  }
}

// --- the per-user cache in localStorage -----------------------------------------------------------------------

const PREFIX = "wardrobe:";
let cacheUser = null;

function openCache(userId) {
  cacheUser = userId;
  try {
    if (localStorage.getItem(PREFIX + "owner") === userId) return;
    // Another person signed in on this browser: nothing of the previous one's may be shown, so drop it all.
    for (const key of Object.keys(localStorage)) if (key.startsWith(PREFIX)) localStorage.removeItem(key);
    localStorage.setItem(PREFIX + "owner", userId);
  } catch {
    // Storage disabled: everything still works, only without the instant first paint.
  }
}

const cache = {
  get(key) {
    try {
      return JSON.parse(localStorage.getItem(`${PREFIX}${cacheUser}:${key}`) || "null");
    } catch {
      return null;
    }
  },
  set(key, etag, body) {
    if (!etag) return;
    try {
      localStorage.setItem(`${PREFIX}${cacheUser}:${key}`, JSON.stringify({ etag, body }));
    } catch {
      // Quota exceeded: the copy is an optimisation, the network answer is already on screen.
    }
  },
};

// --- the API ----------------------------------------------------------------------------------------------------

let authorization = "";

class ApiError extends Error {
  constructor(status, title, description, retryAfter = null) {
    super(description || title);
    this.status = status;
    this.title = title;
    this.retryAfter = retryAfter;
  }
}

function retryAfterSeconds(value) {
  if (!value) return null;
  if (/^\d+$/.test(value.trim())) return Number(value);
  const at = Date.parse(value);
  return Number.isNaN(at) ? null : Math.max(0, Math.round((at - Date.now()) / 1000));
}

function errorFrom(status, header, data) {
  return new ApiError(
    status,
    data?.title || `Error ${status}`,
    data?.description || "",
    retryAfterSeconds(header("Retry-After")),
  );
}

const offline = () => new ApiError(0, "Offline", "No connection to Wardrobe.");

async function api(path, { method = "GET", body, etag } = {}) {
  const headers = { Authorization: authorization };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (etag) headers["If-None-Match"] = etag;
  let resp;
  try {
    // no-store: the browser's HTTP cache would turn our conditional request's 304 back into a 200.
    resp = await fetch(API + path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      cache: "no-store",
    });
  } catch {
    throw offline();
  }
  if (resp.status === 304) return { status: 304, etag };
  let data = null;
  if (resp.status !== 204) {
    try {
      data = await resp.json();
    } catch {
      data = null;
    }
  }
  if (!resp.ok) throw errorFrom(resp.status, (name) => resp.headers.get(name), data);
  return { status: resp.status, etag: resp.headers.get("ETag"), data };
}

// Shows the copy saved on this device at once, then asks the server whether it is still current.
async function cachedGet(key, path, render) {
  const saved = cache.get(key);
  if (saved) render(saved.body, "cache");
  try {
    const answer = await api(path, { etag: saved?.etag });
    if (answer.status === 304) return saved.body;
    cache.set(key, answer.etag, answer.data);
    render(answer.data, "network");
    return answer.data;
  } catch (error) {
    if (!saved) throw error;
    showError(error);
    return saved.body;
  }
}

function uploadPhoto(blob, onProgress) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", API + "/items");
    xhr.setRequestHeader("Authorization", authorization);
    xhr.timeout = 120000;
    xhr.upload.addEventListener("progress", (event) => {
      if (event.lengthComputable) onProgress(event.loaded / event.total);
    });
    xhr.addEventListener("load", () => {
      let data = null;
      try {
        data = JSON.parse(xhr.responseText);
      } catch {
        data = null;
      }
      if (xhr.status === 202) resolve(data);
      else reject(errorFrom(xhr.status, (name) => xhr.getResponseHeader(name), data));
    });
    xhr.addEventListener("error", () => reject(offline()));
    xhr.addEventListener("timeout", () => reject(new ApiError(0, "Timed out", "The upload took too long.")));
    const form = new FormData();
    form.append("image", blob, "photo.jpg");
    xhr.send(form);
  });
}

async function waitJob(jobId, onUpdate) {
  let delay = 600;
  for (;;) {
    let job;
    try {
      job = (await api(`/jobs/${jobId}`)).data;
    } catch (error) {
      if (error.status !== 0 && error.status !== 429 && error.status < 500) throw error;
      await sleep(1000 * (error.retryAfter ?? 2)); // offline or busy: keep waiting, the job goes on server-side
      continue;
    }
    onUpdate(job);
    if (job.state === "succeeded" || job.state === "failed") return job;
    // Behind a long queue of cutouts the job says when asking again is worth it.
    await sleep(Math.max(delay, 1000 * (job.poll_after_seconds ?? 0)));
    delay = Math.min(delay * 1.3, 2500);
  }
}

// --- messages ---------------------------------------------------------------------------------------------------

function describe(error) {
  if (error.status === 0) {
    return navigator.onLine === false
      ? "You are offline. What is saved on this device is shown; changes need a connection."
      : `Can't reach Wardrobe (${error.message}). Check your connection and try again.`;
  }
  if (error.status === 401) return "Your sign-in has expired. Close Wardrobe and open it again from Telegram.";
  if (error.status === 429 || error.status === 503) {
    const wait = error.retryAfter;
    const when = wait ? ` Try again in ${formatSeconds(wait)} (at ${new Date(Date.now() + wait * 1000).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" })}).` : " Try again in a moment.";
    return (error.status === 429 ? "Too many requests." : "Wardrobe is busy right now.") + when;
  }
  return error.message && error.message !== error.title ? `${error.title}: ${error.message}` : error.title || String(error);
}

function formatSeconds(seconds) {
  if (seconds < 60) return `${seconds} s`;
  const minutes = Math.round(seconds / 60);
  return minutes === 1 ? "1 minute" : `${minutes} minutes`;
}

function showError(error, { kind = "error" } = {}) {
  const banner = $("#banner");
  const text = typeof error === "string" ? error : describe(error);
  banner.replaceChildren(
    el(
      "div",
      { class: `msg ${kind}`, role: kind === "error" ? "alert" : null },
      el("p", {}, text),
      el("button", { type: "button", onclick: () => banner.replaceChildren(), "aria-label": "Dismiss" }, "✕"),
    ),
  );
}

function clearBanner() {
  $("#banner").replaceChildren();
}

let toastTimer;
function toast(text) {
  const node = $("#toast");
  node.textContent = text;
  node.hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => (node.hidden = true), 2200);
}

// --- navigation -------------------------------------------------------------------------------------------------

const VIEWS = ["signin", "wardrobe", "add", "item", "capsules", "profile"];
let current = null;
let tg = null;

function show(view, { push = true, replace = false, focus = true } = {}) {
  for (const name of VIEWS) $(`#view-${name}`).hidden = name !== view;
  const tab = view === "add" || view === "item" ? "wardrobe" : view;
  for (const button of document.querySelectorAll("#tabs button")) {
    if (button.dataset.view === tab) button.setAttribute("aria-current", "page");
    else button.removeAttribute("aria-current");
  }
  // The URL never changes (Telegram's fragment must stay for reloads): the view lives in the history state.
  if (replace) history.replaceState({ view }, "", location.href);
  else if (push && current && current !== view) history.pushState({ view }, "", location.href);
  current = view;
  if (tg?.BackButton) {
    if (view === "add" || view === "item") tg.BackButton.show();
    else tg.BackButton.hide();
  }
  if (focus) $(`#view-${view} h2`)?.focus({ preventScroll: true });
  if (view === "wardrobe") loadWardrobe();
  if (view === "capsules") loadCapsules();
  if (view === "profile") loadProfile();
}

function back() {
  if (history.state?.view) history.back();
  else show("wardrobe");
}

// --- wardrobe grid ----------------------------------------------------------------------------------------------

const known = new Map(); // every item seen, by id: capsules show their outfits from it
const grid = { items: [], next: null, loading: false, generation: 0, poll: null };

function filterQuery() {
  const params = new URLSearchParams({ limit: String(PAGE) });
  if ($("#f-category").value) params.set("category", $("#f-category").value);
  if ($("#f-season").value) params.set("season", $("#f-season").value);
  return params.toString();
}

function itemTitle(item) {
  const colour = item.colors?.[0]?.name;
  const kind = item.category ? NOUNS[item.category] || item.category : "item";
  return label(colour ? `${colour} ${kind}` : kind);
}

function thumbImage(item) {
  return el("img", { src: item.cutout_url || item.image_url, alt: "", loading: "lazy", decoding: "async" });
}

function card(item) {
  const sub = [item.brand, label(item.season)].filter(Boolean).join(" · ") || (item.status === "ready" ? "Tap to add details" : "");
  const badge = item.status === "processing" ? "Processing…" : item.status === "failed" ? "Failed" : null;
  return el(
    "li",
    {},
    el(
      "button",
      { type: "button", class: "card", dataset: { id: item.id }, onclick: () => openItem(item.id) },
      el("span", { class: "thumb" }, thumbImage(item)),
      el("span", { class: "meta" }, el("span", { class: "title" }, itemTitle(item)), el("span", { class: "sub" }, sub || "\u00a0")),
      badge && el("span", { class: `badge ${item.status}` }, badge),
    ),
  );
}

function renderGrid() {
  for (const item of grid.items) known.set(item.id, item);
  $("#grid").replaceChildren(...grid.items.map(card));
  const empty = grid.items.length === 0;
  $("#wardrobe-empty").hidden = !empty;
  $("#wardrobe-empty-text").textContent =
    $("#f-category").value || $("#f-season").value
      ? "Nothing matches these filters."
      : "Photograph a piece of clothing: we cut it out and describe it for you.";
  $("#load-more").hidden = !grid.next;
  // While something is still being processed, ask again now and then; with the ETag that costs a 304.
  clearTimeout(grid.poll);
  if (grid.items.some((i) => i.status === "processing")) {
    grid.poll = setTimeout(() => current === "wardrobe" && loadWardrobe(), 3000);
  }
}

async function loadWardrobe() {
  const generation = ++grid.generation;
  const query = filterQuery();
  try {
    await cachedGet(`items?${query}`, `/items?${query}`, (page) => {
      if (generation !== grid.generation) return; // the filters changed meanwhile
      grid.items = page.items;
      grid.next = page.next_cursor;
      renderGrid();
    });
  } catch (error) {
    if (generation === grid.generation) showError(error);
  }
}

async function loadMore() {
  if (!grid.next || grid.loading) return;
  grid.loading = true;
  const generation = grid.generation;
  $("#load-more").disabled = true;
  try {
    const { data } = await api(`/items?${filterQuery()}&cursor=${encodeURIComponent(grid.next)}`);
    if (generation !== grid.generation) return;
    const seen = new Set(grid.items.map((i) => i.id));
    grid.items = grid.items.concat(data.items.filter((i) => !seen.has(i.id)));
    grid.next = data.next_cursor;
    renderGrid();
  } catch (error) {
    showError(error);
  } finally {
    grid.loading = false;
    $("#load-more").disabled = false;
  }
}

// --- adding an item ---------------------------------------------------------------------------------------------

async function downscale(file) {
  let bitmap;
  try {
    bitmap = await createImageBitmap(file, { imageOrientation: "from-image" });
  } catch {
    return file; // not decodable here (HEIC on some browsers): the server decides what it accepts
  }
  const scale = Math.min(1, MAX_SIDE / Math.max(bitmap.width, bitmap.height));
  const canvas = el("canvas", { width: Math.round(bitmap.width * scale), height: Math.round(bitmap.height * scale) });
  const context = canvas.getContext("2d");
  context.fillStyle = "#ffffff"; // JPEG has no alpha: a transparent PNG would otherwise turn black
  context.fillRect(0, 0, canvas.width, canvas.height);
  context.drawImage(bitmap, 0, 0, canvas.width, canvas.height);
  bitmap.close?.();
  const blob = await new Promise((resolve) => canvas.toBlob(resolve, "image/jpeg", 0.88));
  return blob || file;
}

function setStep(step) {
  const order = ["upload", "cutout", "analyze", "ready"];
  const at = order.indexOf(step);
  for (const li of document.querySelectorAll("#upload-steps li")) {
    const index = order.indexOf(li.dataset.step);
    li.className = index < at || step === "ready" ? "done" : index === at ? "now" : "";
  }
}

function jobText(job) {
  if (job.state === "failed") return `This photo could not be processed: ${job.error || "unknown error"}.`;
  if (job.state === "succeeded") return "Ready.";
  if (job.stage === "analyze") return "Describing colours, season and style…";
  const queue = job.queue;
  let text = "Cutting out the background…";
  if (queue?.ahead) text += ` ${queue.ahead} ${queue.ahead === 1 ? "photo" : "photos"} ahead of yours.`;
  if (queue?.estimate_seconds) text += ` About ${formatSeconds(queue.estimate_seconds)}.`;
  return text;
}

let uploading = false;

async function addPhoto(file) {
  if (!file || uploading) return;
  uploading = true;
  clearBanner();
  const progress = $("#upload-progress");
  const status = $("#upload-status");
  $("#upload").hidden = false;
  progress.value = 0;
  setStep("upload");
  status.textContent = "Preparing the photo…";
  try {
    const blob = await downscale(file);
    const preview = $("#upload-preview");
    if (preview.src.startsWith("blob:")) URL.revokeObjectURL(preview.src);
    preview.src = URL.createObjectURL(blob);
    const created = await uploadPhoto(blob, (share) => {
      progress.value = Math.round(share * 100);
      status.textContent = `Uploading… ${Math.round(share * 100)} %`;
    });
    progress.value = 100;
    progress.removeAttribute("value"); // indeterminate while the server works on it
    setStep("cutout");
    status.textContent = jobText(created.job);
    const job = await waitJob(created.job.id, (update) => {
      setStep(update.state === "succeeded" ? "ready" : update.stage === "analyze" ? "analyze" : "cutout");
      status.textContent = jobText(update);
    });
    progress.value = 100;
    if (job.state === "failed") {
      showError(jobText(job));
      return;
    }
    await openItem(created.item.id, { fresh: true });
  } catch (error) {
    status.textContent = "";
    $("#upload").hidden = true;
    showError(error);
  } finally {
    uploading = false;
    $("#pick-file").value = "";
    $("#pick-camera").value = "";
  }
}

// --- one item ---------------------------------------------------------------------------------------------------

let shownItem = null;

function fillSelect(select, values, labeller = label) {
  select.append(...values.map((value) => el("option", { value }, labeller(value))));
}

async function openItem(id, { fresh = false } = {}) {
  clearBanner();
  const item = known.get(id);
  if (item) renderItem(item, fresh);
  show("item", { replace: fresh }); // after an upload, Back leads to the wardrobe, not to the finished upload
  try {
    const { data } = await api(`/items/${id}`);
    known.set(id, data);
    if (current === "item") renderItem(data, fresh);
  } catch (error) {
    showError(error);
    if (!item) back();
  }
}

function renderItem(item, fresh) {
  shownItem = item;
  const form = $("#item-form");
  $("#h-item").textContent = fresh ? "Check what we found" : itemTitle(item);
  const img = $("#item-img");
  img.src = item.cutout_url || item.image_url;
  img.alt = itemTitle(item);
  const source =
    item.source === "openai"
      ? "Described by AI. Correct anything that is wrong: your corrections are kept."
      : item.source === "local"
        ? "Colours were found automatically; fill in the rest."
        : "";
  const statusText = { processing: "Still being processed…", failed: "Processing failed.", ready: "Ready." }[item.status];
  $("#item-status").textContent = `${statusText} ${source}`.trim();
  for (const name of ["category", "season", "style", "formality", "pattern", "material", "brand", "notes"]) {
    form.elements[name].value = item[name] ?? "";
  }
  const colors = item.colors || [];
  $("#item-colors-wrap").hidden = colors.length === 0;
  $("#item-colors").replaceChildren(
    ...colors.map((c) => {
      const swatch = el("span", { class: "swatch", title: c.name, role: "img", "aria-label": c.name });
      if (c.hex) swatch.style.background = c.hex;
      return swatch;
    }),
  );
  $("#item-colors-label").textContent = `Colours: ${colors.map((c) => c.name).join(", ")}`;
  disarmDelete();
}

async function saveItem(event) {
  event.preventDefault();
  const form = $("#item-form");
  const changes = {};
  for (const name of ["category", "season", "style", "pattern", "material", "brand", "notes"]) {
    const value = form.elements[name].value.trim() || null;
    if (value !== (shownItem[name] ?? null)) changes[name] = value;
  }
  const formality = form.elements.formality.value ? Number(form.elements.formality.value) : null;
  if (formality !== (shownItem.formality ?? null)) changes.formality = formality;
  if (Object.keys(changes).length === 0) {
    toast("Nothing to save");
    return;
  }
  try {
    const { data } = await api(`/items/${shownItem.id}`, { method: "PATCH", body: changes });
    known.set(data.id, data);
    renderItem(data, false);
    toast("Saved");
  } catch (error) {
    showError(error);
  }
}

let deleteTimer;
function disarmDelete() {
  const button = $("#item-delete");
  button.classList.remove("armed");
  button.textContent = "Delete";
  clearTimeout(deleteTimer);
}

async function deleteItem() {
  const button = $("#item-delete");
  if (!button.classList.contains("armed")) {
    // A second press confirms: no modal dialog, which Telegram's webviews handle unevenly.
    button.classList.add("armed");
    button.textContent = "Press again to delete";
    deleteTimer = setTimeout(disarmDelete, 4000);
    return;
  }
  disarmDelete();
  try {
    await api(`/items/${shownItem.id}`, { method: "DELETE" });
    known.delete(shownItem.id);
    grid.items = grid.items.filter((i) => i.id !== shownItem.id);
    toast("Deleted");
    show("wardrobe");
  } catch (error) {
    showError(error);
  }
}

let brandTimer;
function suggestBrands(event) {
  clearTimeout(brandTimer);
  const q = event.target.value.trim();
  if (q.length < 2) return;
  brandTimer = setTimeout(async () => {
    try {
      const { data } = await api(`/brands?q=${encodeURIComponent(q)}`);
      $("#brand-list").replaceChildren(...(data?.brands || []).map((b) => el("option", { value: b.name })));
    } catch {
      // Suggestions are a convenience; typing the brand still works.
    }
  }, 250);
}

// --- capsules ---------------------------------------------------------------------------------------------------

const capsuleDetails = new Map();

function capsuleItems(capsule, outfit) {
  const detail = capsuleDetails.get(capsule.id);
  const fromDetail = detail?.outfits?.[capsule.outfits.indexOf(outfit)]?.items;
  if (fromDetail) return fromDetail;
  return (outfit.item_ids || []).map((id) => known.get(id)).filter(Boolean);
}

function capsuleCard(capsule) {
  const title = capsule.name || `${label(capsule.occasion || "everyday")} capsule`;
  const meta = [label(capsule.occasion), label(capsule.season), new Date(capsule.created_at).toLocaleDateString()].filter(Boolean).join(" · ");
  let body;
  if (capsule.state === "pending") body = el("p", { class: "muted" }, "Being put together…");
  else if (capsule.state === "failed") body = el("p", { class: "muted" }, "This capsule could not be built.");
  else {
    body = el(
      "div",
      { class: "outfits" },
      capsule.outfits.map((outfit, index) =>
        el(
          "div",
          { class: "outfit", role: "group", "aria-label": outfit.name || `Outfit ${index + 1}` },
          capsuleItems(capsule, outfit).map((item) =>
            el("button", { type: "button", class: "thumb", title: itemTitle(item), "aria-label": itemTitle(item), onclick: () => openItem(item.id) }, thumbImage(item)),
          ),
        ),
      ),
    );
  }
  return el(
    "li",
    { class: "panel capsule" },
    el("h3", {}, title),
    el("p", { class: "muted" }, meta),
    capsule.description && el("p", {}, capsule.description),
    body,
  );
}

let capsuleGeneration = 0;
async function loadCapsules() {
  const generation = ++capsuleGeneration;
  const render = (page) => {
    if (generation !== capsuleGeneration) return;
    $("#capsules-empty").hidden = page.items.length > 0;
    $("#capsule-list").replaceChildren(...page.items.map(capsuleCard));
    fetchMissingOutfits(page.items, generation);
  };
  try {
    await cachedGet("capsules", "/capsules?limit=20", render);
  } catch (error) {
    showError(error);
  }
}

// Outfits name item ids; the items not seen in the grid yet come from the capsule's own page.
async function fetchMissingOutfits(capsules, generation) {
  const missing = capsules.filter(
    (c) => c.state === "ready" && !capsuleDetails.has(c.id) && c.outfits.some((o) => (o.item_ids || []).some((id) => !known.has(id))),
  );
  for (const capsule of missing.slice(0, 10)) {
    await cachedGet(`capsule:${capsule.id}`, `/capsules/${capsule.id}`, (detail) => capsuleDetails.set(capsule.id, detail)).catch(() => null);
  }
  if (missing.length && generation === capsuleGeneration) {
    const saved = cache.get("capsules");
    if (saved) $("#capsule-list").replaceChildren(...saved.body.items.map(capsuleCard));
  }
}

async function generateCapsule(event) {
  event.preventDefault();
  const form = $("#capsule-form");
  const body = {};
  if (form.elements.occasion.value) body.occasion = form.elements.occasion.value;
  if (form.elements.season.value) body.season = form.elements.season.value;
  const button = $("#capsule-go");
  button.disabled = true;
  clearBanner();
  $("#capsule-progress").hidden = false;
  $("#capsule-status").textContent = "Putting outfits together…";
  try {
    const { data } = await api("/capsules", { method: "POST", body });
    const job = await waitJob(data.job.id, () => {});
    if (job.state === "failed") showError(`No capsule this time: ${job.error || "it could not be built"}.`);
    else toast("Capsule ready");
    await loadCapsules();
  } catch (error) {
    showError(error);
  } finally {
    button.disabled = false;
    $("#capsule-progress").hidden = true;
  }
}

// --- profile ----------------------------------------------------------------------------------------------------

let profileGeneration = 0;
async function loadProfile() {
  const generation = ++profileGeneration;
  try {
    await cachedGet("me", "/me", (me) => generation === profileGeneration && renderProfile(me));
  } catch (error) {
    showError(error);
  }
}

function renderProfile(me) {
  const form = $("#profile-form");
  const prefs = me.preferences || {};
  form.elements.display_name.value = me.display_name || "";
  form.elements.gender.value = prefs.gender || "";
  for (const size of ["top", "bottom", "dress", "shoes"]) form.elements[`size-${size}`].value = prefs.sizes?.[size] || "";
  form.elements.favourite_colors.value = (prefs.favourite_colors || []).join(", ");
  for (const box of form.querySelectorAll("input[name=style]")) box.checked = (prefs.style || []).includes(box.value);
}

async function saveProfile(event) {
  event.preventDefault();
  const form = $("#profile-form");
  const name = form.elements.display_name.value.trim();
  if (!name) {
    showError("Please enter a name.");
    form.elements.display_name.focus();
    return;
  }
  const sizes = {};
  for (const size of ["top", "bottom", "dress", "shoes"]) {
    const value = form.elements[`size-${size}`].value.trim();
    if (value) sizes[size] = value;
  }
  const colours = [...new Set(form.elements.favourite_colors.value.split(",").map((c) => c.trim().toLowerCase()).filter(Boolean))];
  const body = {
    display_name: name,
    gender: form.elements.gender.value || null,
    sizes,
    favourite_colors: colours.slice(0, 12),
    style: [...form.querySelectorAll("input[name=style]:checked")].map((box) => box.value),
  };
  try {
    const { data } = await api("/me", { method: "PATCH", body });
    renderProfile(data);
    clearBanner();
    toast("Preferences saved");
  } catch (error) {
    showError(error);
  }
}

// --- start ------------------------------------------------------------------------------------------------------

function wire() {
  const categoryLabel = (c) => label(NOUNS[c] || c);
  fillSelect($("#f-category"), CATEGORIES, categoryLabel);
  fillSelect($("#f-season"), SEASONS);
  const itemForm = $("#item-form");
  fillSelect(itemForm.elements.category, CATEGORIES, categoryLabel);
  fillSelect(itemForm.elements.season, SEASONS);
  fillSelect(itemForm.elements.style, STYLES);
  const capsuleForm = $("#capsule-form");
  fillSelect(capsuleForm.elements.occasion, OCCASIONS);
  fillSelect(capsuleForm.elements.season, SEASONS);
  $("#style-chips").append(...STYLES.map((style) => el("label", {}, el("input", { type: "checkbox", name: "style", value: style }), label(style))));

  for (const button of document.querySelectorAll("#tabs button")) {
    button.addEventListener("click", () => {
      clearBanner();
      show(button.dataset.view);
    });
  }
  for (const button of document.querySelectorAll("[data-back]")) button.addEventListener("click", back);
  $("#f-category").addEventListener("change", loadWardrobe);
  $("#f-season").addEventListener("change", loadWardrobe);
  $("#add-open").addEventListener("click", () => {
    $("#upload").hidden = true;
    show("add");
  });
  $("#load-more").addEventListener("click", loadMore);
  for (const picker of ["#pick-camera", "#pick-file"]) {
    $(picker).addEventListener("change", (event) => addPhoto(event.target.files[0]));
  }
  itemForm.addEventListener("submit", saveItem);
  itemForm.elements.brand.addEventListener("input", suggestBrands);
  $("#item-delete").addEventListener("click", deleteItem);
  capsuleForm.addEventListener("submit", generateCapsule);
  $("#profile-form").addEventListener("submit", saveProfile);

  // Infinite scroll: the next page is asked for before the end of the grid is in view.
  if ("IntersectionObserver" in window) {
    new IntersectionObserver((entries) => entries.some((e) => e.isIntersecting) && loadMore(), { rootMargin: "600px" }).observe($("#grid-end"));
  }
  window.addEventListener("popstate", (event) => show(event.state?.view || "wardrobe", { push: false }));
  window.addEventListener("offline", () => showError("You are offline. What is saved on this device is shown; changes need a connection."));
  window.addEventListener("online", () => {
    clearBanner();
    if (current) show(current, { push: false, focus: false });
  });
}

async function start() {
  applyTheme(themeFromHash());
  if (insideTelegram()) {
    tg = await loadTelegram();
    if (tg) {
      tg.ready?.();
      tg.expand?.();
      applyTheme(tg.themeParams);
      tg.onEvent?.("themeChanged", () => applyTheme(tg.themeParams));
      tg.BackButton?.onClick?.(back);
    }
  }
  wire();
  const initData = readInitData(tg);
  const userId = userIdOf(initData);
  if (!userId) {
    show("signin", { push: false });
    return;
  }
  authorization = `tma ${initData}`;
  openCache(userId);
  $("#tabs").hidden = false;
  history.replaceState({ view: "wardrobe" }, "", location.href);
  show("wardrobe", { push: false, focus: false });
}

start();
