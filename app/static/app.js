// Exemplar's web page: plain JavaScript, no framework, no build step, nothing loaded from elsewhere.
// It only calls the service's own API: GET /v1/index (task, labels, choices), POST /v1/explain
// (the examples and the score), POST /v1/compare (the chart's numbers) and GET /v1/examples/{id}.
"use strict";

// Labels and one-sentence help of strategies and estimators come from GET /v1/index (the
// service's registries), so a new strategy shows up here without editing this page.
const strategyLabel = (name) => state.index?.strategy_descriptions?.[name]?.label || name;
const estimatorLabel = (name) => state.index?.estimator_descriptions?.[name]?.label || name;
const WEIGHT_ZERO = 1e-6; // a weight at or below this is zero (exemplar.explain.WEIGHT_ZERO)
const SOLVER_NAMES = { paper: "the paper's solver (pinv, projected onto the simplex)",
  exact: "the exact simplex least-squares solver" };
const SCALE_DB = 10; // the colour scale spans -10..+10 dB; scores beyond sit at its ends

const state = { index: null, apiKey: "", inFlight: null };
const $ = (id) => document.getElementById(id);

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

async function api(method, path, body, signal) {
  const headers = { Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (state.apiKey) headers["X-API-Key"] = state.apiKey;
  let response;
  try {
    response = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      signal,
    });
  } catch (err) {
    if (err.name === "AbortError") throw err;
    throw new ApiError(0, "the service did not answer; is it still running?");
  }
  let data = null;
  try {
    data = await response.json();
  } catch (err) {
    data = null;
  }
  if (!response.ok) {
    const message = data && data.error ? data.error : `HTTP ${response.status}`;
    throw new ApiError(response.status, message);
  }
  return data;
}

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "class") node.className = value;
    else if (name === "text") node.textContent = value;
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function svg(tag, attrs, ...children) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value !== null && value !== undefined) node.setAttribute(name, String(value));
  }
  for (const child of children) {
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function formatDb(db) {
  if (db === null || db === undefined) return "n/a";
  return `${db > 0 ? "+" : db < 0 ? "\u2212" : ""}${Math.abs(db).toFixed(2)} dB`;
}

function formatNumber(x) {
  if (x === null || x === undefined) return "n/a";
  const abs = Math.abs(x);
  const text = abs !== 0 && (abs < 1e-3 || abs >= 1e4) ? abs.toExponential(2) : abs.toPrecision(3);
  return (x < 0 ? "\u2212" : "") + text;
}

// Where the score was computed, and the same selection's score in the index's projection.
function scoreSpaceWords(result) {
  const solver = SOLVER_NAMES[result.solver] || result.solver;
  if (result.score_space === "full") {
    return `Scored on the exact gradients of the model's weights, with ${solver}; `
      + `on the index's projected gradients the same examples score ${formatDb(result.projected_score_db)}.`;
  }
  return `Scored on the index's projected gradients, with ${solver}.`;
}

// A colour for a score: red below 0 dB, grey at 0, green above (clamped to the scale).
function scoreColour(db) {
  if (db === null || db === undefined) return "#6b6b6b";
  const t = Math.max(-1, Math.min(1, db / SCALE_DB));
  const grey = [107, 107, 107];
  const end = t < 0 ? [178, 34, 34] : [22, 118, 62];
  const mix = grey.map((g, i) => Math.round(g + (end[i] - g) * Math.abs(t)));
  return `rgb(${mix.join(", ")})`;
}

function scoreReading(db) {
  if (db === null || db === undefined) {
    return "No score: the query's gradient is zero, so there is nothing to explain.";
  }
  if (db > 0) {
    return "Above 0 dB: together, these weighted examples explain the model's output better than nothing.";
  }
  if (db < 0) {
    return "Below 0 dB: these examples do not explain the output; showing nothing would fit better. "
      + "Try another strategy or k (see the comparison below).";
  }
  return "0 dB: these examples explain the output no better than nothing.";
}

function showError(message) {
  $("error").textContent = message;
}

function clearMessages() {
  $("error").textContent = "";
  $("status").textContent = "";
}

function needKey(message) {
  $("key-section").hidden = false;
  showError(message);
  $("api-key").focus();
}

// ---- the served index ----------------------------------------------------------------

function fillSelect(select, values, label, chosen) {
  select.replaceChildren(...values.map((v) => el("option", { value: v, selected: v === chosen }, label(v))));
}

function describeIndex(info) {
  const task = info.task === "classification" ? "a classifier" : "a causal language model";
  const labels = info.labels && info.labels.length ? ` (labels: ${info.labels.join(", ")})` : "";
  return `Serving ${task}${labels}; ${info.n_examples} training examples indexed.`;
}

async function loadIndex() {
  let info;
  try {
    info = await api("GET", "/v1/index");
  } catch (err) {
    if (err.status === 401) {
      $("index-info").textContent = "This service needs an API key before it shows its index.";
      needKey(`${err.message}. Enter your API key above.`);
    } else {
      $("index-info").textContent = "The served index could not be loaded.";
      showError(`Could not load the served index: ${err.message}`);
    }
    return;
  }
  state.index = info;
  $("index-info").textContent = describeIndex(info);
  const classifier = info.task === "classification";
  $("classifier-fields").hidden = !classifier;
  $("causal-fields").hidden = classifier;
  if (classifier) {
    const label = $("label");
    const current = label.value;
    label.replaceChildren(
      el("option", { value: "" }, "the model's prediction"),
      ...(info.labels || []).map((l) => el("option", { value: l, selected: l === current }, l)),
    );
  }
  const strategy = $("strategy").value || "reconstruct"; // the service's default
  const estimator = $("estimator").value || "grad_dot";
  fillSelect($("strategy"), info.strategies, strategyLabel, strategy);
  fillSelect($("estimator"), info.estimators, estimatorLabel, estimator);
  $("k").max = String(info.max_k);
  $("k-help").textContent = `How many training examples to show (1 to ${Math.min(info.max_k, info.n_examples)}).`;
  updateHelp();
}

function updateHelp() {
  const info = state.index || {};
  $("strategy-help").textContent = info.strategy_descriptions?.[$("strategy").value]?.summary || "";
  $("estimator-help").textContent = info.estimator_descriptions?.[$("estimator").value]?.summary || "";
  $("lam").closest(".field").classList.toggle("inactive", $("strategy").value !== "balanced");
}

// ---- the query -----------------------------------------------------------------------

// The request body from the form, or a message saying what to fill in (and where).
function readForm() {
  const body = {};
  if (state.index.task === "classification") {
    const text = $("text").value.trim();
    if (!text) return { problem: "Enter a text to explain.", field: $("text") };
    body.text = text;
    if ($("label").value) body.label = $("label").value;
  } else {
    const prompt = $("prompt").value.trim();
    const response = $("response").value.trim();
    if (!prompt) return { problem: "Enter the prompt.", field: $("prompt") };
    body.prompt = prompt;
    if (response) body.response = response; // empty: the model generates one and it is explained
  }
  // k and lambda go to the service as typed: it checks them and says what is wrong.
  const k = $("k").value.trim();
  if (k === "") return { problem: "Enter how many examples to show (k).", field: $("k") };
  body.k = Number(k);
  const lam = $("lam").value.trim();
  if (lam !== "") body.lam = Number(lam);
  body.strategy = $("strategy").value;
  body.estimator = $("estimator").value;
  return { body };
}

async function submitQuery(event) {
  event.preventDefault();
  clearMessages();
  if (!state.index) {
    await loadIndex();
    if (!state.index) return;
  }
  const { body, problem, field } = readForm();
  if (problem) {
    showError(problem);
    field.focus();
    return;
  }
  if (state.inFlight) state.inFlight.abort();
  const controller = new AbortController();
  state.inFlight = controller;
  const form = $("query-form");
  form.setAttribute("aria-busy", "true");
  $("status").textContent = "Explaining\u2026";
  let explanation;
  try {
    explanation = await api("POST", "/v1/explain", body, controller.signal);
  } catch (err) {
    if (err.name === "AbortError") return;
    state.inFlight = null;
    form.removeAttribute("aria-busy");
    $("status").textContent = "";
    $("results").hidden = true;
    $("comparison").hidden = true;
    if (err.status === 401) needKey(`${err.message}. Enter your API key above.`);
    else showError(`Could not explain this query: ${err.message}`);
    return;
  }
  renderExplanation(explanation);
  if (explanation.generated_response) {
    // the model's own answer: shown in the form and sent to /v1/compare, which needs a response
    $("response").value = explanation.generated_response;
    body.response = explanation.generated_response;
    $("prediction").prepend(el("p", { class: "generated" }, el("span", { class: "field-name" },
      "The model answered "), explanation.generated_response));
  }
  const n = explanation.examples.length;
  $("status").textContent = `Explained with ${n} example${n === 1 ? "" : "s"}; `
    + `score ${formatDb(explanation.score_db)}. ${scoreReading(explanation.score_db)}`;
  $("comparison").hidden = false;
  $("compare-status").textContent = "Comparing strategies\u2026";
  $("chart-strategy").replaceChildren();
  $("chart-k").replaceChildren();
  try {
    const comparison = await api("POST", "/v1/compare", body, controller.signal);
    renderComparison(comparison);
    $("compare-status").textContent = "Comparison ready.";
  } catch (err) {
    if (err.name === "AbortError") return;
    $("compare-status").textContent = "";
    showError(`Could not compare strategies: ${err.message}`);
  } finally {
    if (state.inFlight === controller) {
      state.inFlight = null;
      form.removeAttribute("aria-busy");
    }
  }
}

// ---- results -------------------------------------------------------------------------

function renderPrediction(prediction, index) {
  const box = $("prediction");
  if (index.task === "classification") {
    const probs = prediction.probabilities || {};
    const p = probs[prediction.label];
    const parts = [
      el("p", {}, "The model predicts ", el("strong", { class: "predicted-label" }, prediction.label),
        p === undefined ? "" : ` (${(100 * p).toFixed(1)}%).`),
    ];
    if (prediction.explained_label && prediction.explained_label !== prediction.label) {
      parts.push(el("p", {}, "Explaining the label ", el("strong", {}, prediction.explained_label), "."));
    }
    box.replaceChildren(...parts);
  } else {
    box.replaceChildren(
      el("p", {}, `Response log-probability ${formatNumber(prediction.response_logprob)} over `
        + `${prediction.response_tokens} tokens (mean token loss ${formatNumber(prediction.mean_token_loss)}).`),
    );
  }
  if (prediction.truncated) {
    box.append(el("p", { class: "help" }, "The query was longer than the index allows and was cut."));
  }
}

function influenceWords(influence, estimator) {
  if (estimator === "bm25") return "similarity (larger = more related)";
  if (influence < 0) return "helpful: training on it lowers the query's loss";
  if (influence > 0) return "harmful: training on it raises the query's loss";
  return "neutral";
}

function renderCard(example, i, estimator) {
  const percent = 100 * example.weight;
  const bar = el("div", { class: "weight-bar" });
  const fill = el("div", { class: "weight-fill" });
  fill.style.width = `${Math.max(0, Math.min(100, percent)).toFixed(1)}%`;
  bar.append(fill);
  const turn = (m) => el("p", { class: `example-turn turn-${m.role}` },
    el("span", { class: "field-name" }, `${m.role[0].toUpperCase()}${m.role.slice(1)} `), m.content);
  const body = example.text !== undefined
    ? [el("p", { class: "example-text" }, example.text),
      ...(example.text_pair !== undefined ? [el("p", { class: "example-text-pair" }, example.text_pair)] : [])]
    : example.messages !== undefined
      ? example.messages.map(turn) // a conversation: every turn, the last the response explained
      : [
          el("p", { class: "example-prompt" }, el("span", { class: "field-name" }, "Prompt "), example.prompt),
          el("p", { class: "example-response" }, el("span", { class: "field-name" }, "Response "), example.response),
        ];
  const tag = example.label !== undefined ? example.label : null;
  const link = el("a", {
    class: "full-link",
    href: `/v1/examples/${encodeURIComponent(example.id)}`,
    "data-id": example.id,
  }, "Full example");
  link.append(el("span", { class: "visually-hidden" }, ` ${i + 1} (${example.id})`));
  return el("li", { class: "card", "data-id": example.id, "data-weight": example.weight,
    "data-influence": example.influence },
    el("div", { class: "card-head" },
      el("span", { class: "rank", "aria-hidden": "true" }, `#${i + 1}`),
      tag === null ? null : el("span", { class: "label-chip" }, tag),
      el("span", { class: "example-id" }, example.id)),
    ...body,
    el("div", { class: "weight" },
      el("span", { class: "field-name" }, "Weight "),
      el("span", { class: "weight-value" }, `${example.weight.toFixed(3)} (${percent.toFixed(1)}%)`),
      bar),
    el("p", { class: "influence" },
      el("span", { class: "field-name" }, "Influence "),
      el("span", { class: "influence-value" }, formatNumber(example.influence)),
      ` \u2014 ${influenceWords(example.influence, estimator)}`),
    link,
  );
}

function renderExplanation(result) {
  renderPrediction(result.prediction, result.index);
  const score = $("score");
  const db = result.score_db;
  score.dataset.score = db === null ? "" : String(db);
  $("score-value").textContent = formatDb(db);
  $("score-value").style.color = scoreColour(db);
  score.classList.toggle("positive", db !== null && db > 0);
  score.classList.toggle("negative", db !== null && db <= 0);
  const position = db === null ? 50 : 50 + 50 * Math.max(-1, Math.min(1, db / SCALE_DB));
  $("scale-marker").style.left = `${position}%`;
  const strategy = strategyLabel(result.strategy);
  const how = result.reason ? ` Auto chose ${strategy}: ${result.reason}.` : "";
  $("score-reading").textContent = `${scoreReading(db)} Strategy ${strategy}, k = ${result.k}.${how}`;
  $("score-space").textContent = scoreSpaceWords(result);
  // the explanation is the examples with weight; the others were selected but add nothing
  const weighted = result.examples.filter((e) => e.weight > WEIGHT_ZERO);
  const unweighted = result.examples.filter((e) => !(e.weight > WEIGHT_ZERO));
  const estimator = result.options.estimator;
  $("cards").replaceChildren(...weighted.map((e, i) => renderCard(e, i, estimator)));
  $("unweighted-cards").replaceChildren(...unweighted.map((e, i) => renderCard(e, weighted.length + i, estimator)));
  $("unweighted").hidden = unweighted.length === 0;
  $("results").hidden = false;
}

// ---- charts (inline SVG from the numbers /v1/compare returns) --------------------------

function extent(values) {
  const finite = values.filter((v) => v !== null && Number.isFinite(v));
  let lo = Math.min(0, ...finite);
  let hi = Math.max(0, ...finite);
  if (hi - lo < 1) {
    hi += 0.5;
    lo -= 0.5;
  }
  const pad = 0.08 * (hi - lo);
  return [lo - pad, hi + pad];
}

function pointLabel(p) {
  const got = p.n_examples < p.k ? ` (n=${p.n_examples})` : "";
  return `${formatDb(p.score_db)}${got}`;
}

// Horizontal bars: one per strategy, from the 0 dB line.
function barChart(points, chosen) {
  const width = 400;
  const row = 28;
  const left = 92;
  const right = 112;
  const top = 8;
  const height = top + row * points.length + 24;
  const [lo, hi] = extent(points.map((p) => p.score_db));
  const x = (v) => left + ((v - lo) / (hi - lo)) * (width - left - right);
  const chart = svg("svg", { viewBox: `0 0 ${width} ${height}`, class: "chart-svg", role: "img",
    "aria-label": points.map((p) => `${strategyLabel(p.strategy)} ${formatDb(p.score_db)}`).join("; ") });
  points.forEach((p, i) => {
    const y = top + i * row;
    const db = p.score_db === null ? 0 : p.score_db;
    const x0 = x(Math.min(0, db));
    const g = svg("g", { class: `bar${p.strategy === chosen ? " chosen" : ""}`, "data-strategy": p.strategy,
      "data-k": p.k, "data-db": p.score_db === null ? "" : p.score_db });
    g.append(
      svg("text", { x: left - 8, y: y + row / 2 + 4, "text-anchor": "end", class: "axis-label" },
        strategyLabel(p.strategy)),
      svg("rect", { x: x0, y: y + 5, width: Math.max(1, Math.abs(x(db) - x(0))), height: row - 10,
        fill: scoreColour(p.score_db), rx: 2 }),
      svg("text", { x: width - right + 6, y: y + row / 2 + 4, class: "value-label" }, pointLabel(p)),
    );
    chart.append(g);
  });
  chart.append(
    svg("line", { x1: x(0), x2: x(0), y1: top - 4, y2: top + row * points.length + 2, class: "zero-line" }),
    svg("text", { x: x(0), y: height - 4, "text-anchor": "middle", class: "axis-label" }, "0 dB"),
  );
  return chart;
}

// A line over k: the chosen strategy's score at each k, evenly spaced.
function lineChart(points, chosenK) {
  const width = 400;
  const height = 230;
  const left = 48;
  const right = 40;
  const top = 26;
  const bottom = 40;
  const [lo, hi] = extent(points.map((p) => p.score_db));
  const step = points.length > 1 ? (width - left - right) / (points.length - 1) : 0;
  const x = (i) => (points.length > 1 ? left + i * step : (left + width - right) / 2);
  const y = (v) => top + (1 - (v - lo) / (hi - lo)) * (height - top - bottom);
  const chart = svg("svg", { viewBox: `0 0 ${width} ${height}`, class: "chart-svg", role: "img",
    "aria-label": points.map((p) => `k ${p.k}: ${formatDb(p.score_db)}`).join("; ") });
  chart.append(
    svg("line", { x1: left, x2: width - right, y1: y(0), y2: y(0), class: "zero-line" }),
    svg("text", { x: left - 6, y: y(0) + 4, "text-anchor": "end", class: "axis-label" }, "0 dB"),
    svg("text", { x: (left + width - right) / 2, y: height - 4, "text-anchor": "middle", class: "axis-label" },
      "k (examples)"),
  );
  const finite = points.map((p, i) => [p, i]).filter(([p]) => p.score_db !== null);
  if (finite.length > 1) {
    chart.append(svg("polyline", { class: "series",
      points: finite.map(([p, i]) => `${x(i).toFixed(1)},${y(p.score_db).toFixed(1)}`).join(" ") }));
  }
  points.forEach((p, i) => {
    const g = svg("g", { class: `point${p.k === chosenK ? " chosen" : ""}`, "data-k": p.k,
      "data-strategy": p.strategy, "data-db": p.score_db === null ? "" : p.score_db });
    g.append(svg("text", { x: x(i), y: height - bottom + 18, "text-anchor": "middle", class: "axis-label" }, p.k));
    if (p.score_db !== null) {
      g.append(
        svg("circle", { cx: x(i), cy: y(p.score_db), r: p.k === chosenK ? 6 : 4, fill: scoreColour(p.score_db) }),
        svg("text", { x: x(i), y: y(p.score_db) - 10, "text-anchor": "middle", class: "value-label" },
          formatDb(p.score_db)),
      );
    }
    chart.append(g);
  });
  return chart;
}

function table(points, first, firstName) {
  return el("details", { class: "numbers" },
    el("summary", {}, "Show the numbers"),
    el("table", {},
      el("thead", {}, el("tr", {}, el("th", { scope: "col" }, firstName), el("th", { scope: "col" }, "score"),
        el("th", { scope: "col" }, "examples"))),
      el("tbody", {}, ...points.map((p) => el("tr", {},
        el("th", { scope: "row" }, first(p)), el("td", {}, formatDb(p.score_db)), el("td", {}, p.n_examples))))));
}

function renderComparison(result) {
  const chosen = strategyLabel(result.strategy);
  $("chart-strategy-caption").textContent = `Score by strategy at k = ${result.k}`;
  $("chart-strategy").replaceChildren(
    barChart(result.by_strategy, result.strategy),
    table(result.by_strategy, (p) => strategyLabel(p.strategy), "strategy"),
  );
  $("chart-k-caption").textContent = `Score by k for ${chosen}`;
  $("chart-k").replaceChildren(lineChart(result.by_k, result.k), table(result.by_k, (p) => p.k, "k"));
}

// ---- the full example --------------------------------------------------------------------

async function showExample(event) {
  const link = event.target.closest("a.full-link");
  if (!link || event.button !== 0 || event.ctrlKey || event.metaKey || event.shiftKey) return;
  event.preventDefault();
  let example;
  try {
    example = await api("GET", `/v1/examples/${encodeURIComponent(link.dataset.id)}`);
  } catch (err) {
    showError(`Could not load the example: ${err.message}`);
    return;
  }
  const rows = [];
  for (const name of ["id", "label", "text", "text_pair", "prompt", "response", "source"]) {
    if (example[name] !== undefined) rows.push(el("dt", {}, name), el("dd", { "data-field": name }, example[name]));
  }
  for (const [i, m] of (example.messages || []).entries()) {
    rows.push(el("dt", {}, `${m.role} (turn ${i + 1})`), el("dd", { "data-field": `messages.${i}` }, m.content));
  }
  if (example.meta && Object.keys(example.meta).length) {
    rows.push(el("dt", {}, "meta"), el("dd", { "data-field": "meta" }, el("pre", {}, JSON.stringify(example.meta, null, 1))));
  }
  $("example-fields").replaceChildren(...rows);
  $("example-dialog").showModal();
}

// ---- wiring ----------------------------------------------------------------------------------

function submitOnEnter(event) {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    $("query-form").requestSubmit();
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("query-form").addEventListener("submit", submitQuery);
  $("key-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    state.apiKey = $("api-key").value.trim();
    clearMessages();
    await loadIndex();
    if (state.index) {
      $("status").textContent = "Key accepted.";
      const first = state.index.task === "classification" ? $("text") : $("prompt");
      first.focus();
    }
  });
  for (const id of ["text", "prompt", "response"]) $(id).addEventListener("keydown", submitOnEnter);
  $("strategy").addEventListener("change", updateHelp);
  $("estimator").addEventListener("change", updateHelp);
  $("cards").addEventListener("click", showExample);
  loadIndex();
});
