// The labelling page: one pair at a time from /api/next, a judgement or an undo posted back as JSON.
// Everything the server sends is written with textContent: model answers never become markup.
"use strict";

const token = new URLSearchParams(location.hash.slice(1)).get("token");
const $ = (id) => document.getElementById(id);
let labeller = localStorage.getItem("labeller");
let current = null;  // the pair on screen: {pair, shown_left, ...}
let busy = false;    // one request at a time: a double click never judges twice

async function call(path, body) {
  const headers = token ? {Authorization: "Bearer " + token} : {};
  const init = body === undefined ? {headers} : {
    method: "POST", headers: {...headers, "Content-Type": "application/json"}, body: JSON.stringify(body)};
  const response = await fetch(path, init);
  const data = await response.json();
  if (!response.ok) throw new Error(data.error || response.statusText);
  return data;
}

function show(next) {
  current = next.pair ? next : null;
  $("progress").max = next.total;
  $("progress").value = next.done;
  $("count").textContent = `${next.done} / ${next.total}`;
  $("task").hidden = !current;
  $("done").hidden = !!current;
  if (current) {
    $("prompt").textContent = next.prompt;
    $("left").textContent = next.left;
    $("right").textContent = next.right;
    $("comment").value = "";
  }
}

async function step(action) {
  if (busy) return;
  busy = true;
  try {
    $("status").textContent = await action() || "";
    show(await call("api/next?labeller=" + encodeURIComponent(labeller)));
  } catch (error) {
    $("status").textContent = "error: " + error.message;
  } finally {
    busy = false;
  }
}

function judge(choice) {
  if (!current) return;
  step(async () => {
    await call("api/judge", {labeller, pair: current.pair, shown_left: current.shown_left, choice,
                             comment: $("comment").value});
  });
}

function undo() {
  step(async () => `undid ${(await call("api/undo", {labeller})).undone}`);
}

function start() {
  $("who").textContent = "labelling as " + labeller;
  $("name-form").hidden = true;
  step(async () => "");
}

document.querySelectorAll("button[data-choice]").forEach((button) =>
  button.addEventListener("click", () => judge(button.dataset.choice)));
$("undo").addEventListener("click", undo);
$("name-form").addEventListener("submit", (event) => {
  event.preventDefault();
  labeller = $("name").value;
  localStorage.setItem("labeller", labeller);
  start();
});
const KEYS = {a: "left", ArrowLeft: "left", b: "right", ArrowRight: "right", t: "tie", x: "both_bad"};
document.addEventListener("keydown", (event) => {
  if (event.target.tagName === "INPUT" || event.ctrlKey || event.metaKey || event.altKey) return;
  if (event.key in KEYS) judge(KEYS[event.key]);
  else if (event.key === "u") undo();
  else return;
  event.preventDefault();
});

if (labeller) start(); else $("name-form").hidden = false;
