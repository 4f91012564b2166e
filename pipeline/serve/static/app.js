// The page: plain DOM code over the JSON endpoints (/users, /history, /recommend, /similar, /search).
"use strict";

const $ = (id) => document.getElementById(id);

async function getJSON(path, params) {
  const url = path + "?" + new URLSearchParams(params).toString();
  const response = await fetch(url);
  const body = await response.json();
  if (!response.ok) throw new Error(body.detail || response.statusText);
  return body;
}

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = !message;
}

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function itemName(entry) {
  return entry.title ? `${entry.title} (${entry.item})` : entry.item;
}

function similarButton(item) {
  const button = el("button", "similar-button", "similar");
  button.type = "button";
  button.dataset.item = item;
  button.addEventListener("click", () => loadSimilar(item));
  return button;
}

function renderHistory(history) {
  $("history-user").textContent = history.user;
  const list = $("history");
  list.replaceChildren();
  for (const review of history.reviews) {
    const li = el("li");
    li.append(el("span", "name", itemName(review)));
    if (review.rating !== null) li.append(el("span", "muted", `  ${"★".repeat(Math.round(review.rating))} ${review.date || ""}`));
    li.append(similarButton(review.item));
    li.append(el("div", "snippet", review.snippet));
    list.append(li);
  }
  if (!history.reviews.length) list.append(el("li", "muted", "no training reviews"));
}

function renderBars(parts, scale) {
  const bars = el("div", "bars");
  for (const [name, value] of Object.entries(parts)) {
    const row = el("div", "bar-row");
    row.dataset.part = name;
    const track = el("div", "bar-track");
    const bar = el("div", "bar " + (value >= 0 ? "pos" : "neg"));
    const width = Math.min(50, (50 * Math.abs(value)) / scale);
    bar.style.width = width + "%";
    bar.style.left = value >= 0 ? "50%" : 50 - width + "%";
    track.append(bar);
    row.append(el("span", "", name), track, el("span", "muted", value.toFixed(3)));
    bars.append(row);
  }
  return bars;
}

function renderRecommendations(result) {
  $("recs-title").textContent = `Top ${result.items.length} for ${result.user} (${result.model})`;
  const list = $("recs");
  list.replaceChildren();
  const scale = Math.max(1e-9, ...result.items.flatMap((it) => Object.values(it.parts).map(Math.abs)));
  for (const item of result.items) {
    const li = el("li");
    li.className = "rec";
    li.append(el("span", "name", itemName(item)), el("span", "muted", `  score ${item.score.toFixed(3)}`));
    li.append(similarButton(item.item));
    li.append(renderBars(item.parts, scale));
    if (item.reason) li.append(el("div", "reason", item.reason.text));
    list.append(li);
  }
}

function renderNeighbours(target, items) {
  const list = $("similar");
  list.replaceChildren();
  $("similar-to").textContent = target;
  for (const item of items) {
    const li = el("li");
    li.append(el("span", "name", itemName(item)), el("span", "muted", `  cosine ${item.similarity.toFixed(3)}`));
    li.append(similarButton(item.item));
    list.append(li);
  }
}

async function loadSimilar(item) {
  try {
    const result = await getJSON("/similar", { item, k: 10 });
    renderNeighbours(itemName(result.item), result.items);
    showError("");
  } catch (error) {
    showError(error.message);
  }
}

async function loadUser(event) {
  if (event) event.preventDefault();
  const user = $("user-input").value.trim();
  const k = $("k-input").value;
  if (!user) return;
  try {
    const [history, recs] = await Promise.all([
      getJSON("/history", { user }),
      getJSON("/recommend", { user, k }),
    ]);
    renderHistory(history);
    renderRecommendations(recs);
    showError("");
  } catch (error) {
    showError(error.message);
  }
}

async function search(event) {
  event.preventDefault();
  const q = $("search-input").value;
  try {
    const result = await getJSON("/search", { q, k: $("k-input").value });
    renderNeighbours(`matching “${result.query}”`, result.items);
    showError("");
  } catch (error) {
    showError(error.message);
  }
}

async function start() {
  $("user-form").addEventListener("submit", loadUser);
  $("search-form").addEventListener("submit", search);
  try {
    const health = await getJSON("/health", {});
    $("model-info").textContent =
      `run ${health.run}: ${health.model}, ${health.n_users} users, ${health.n_items} items` +
      (health.search ? "" : ` (search off: ${health.search_note})`);
    $("search-button").disabled = !health.search;
    const users = await getJSON("/users", { limit: 200 });
    for (const u of users.users) {
      const option = el("option");
      option.value = u.user;
      option.label = `${u.user} (${u.train_reviews} reviews)`;
      $("user-list").append(option);
    }
    document.body.dataset.ready = "true";
  } catch (error) {
    showError(error.message);
  }
}

start();
