// The sandbox inbox. Message content is only ever set as text (textContent) or, for an HTML
// mail body, as the srcdoc of an iframe whose sandbox attribute has no allow-scripts: no
// script from a message runs, and the page's Content-Security-Policy backs that up.
"use strict";

const API = "/_inbox/api/messages";
const POLL_MS = 1000;
let selected = null; // seq of the message shown on the right
let signature = "";
let messages = [];
let view = "html";

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (name === "class") node.className = value;
    else node.setAttribute(name, value);
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(typeof child === "string" ? document.createTextNode(child) : child);
  }
  return node;
}

function when(epoch) {
  return new Date(epoch * 1000).toLocaleTimeString();
}

function summary(m) {
  if (m.channel === "email") return m.subject || (m.template ? "template " + m.template.id : "(no subject)");
  if (m.channel === "voice") return (m.text || (m.audio_token ? "audio " + m.audio_token : "")) || "";
  return m.text || "";
}

function query() {
  const params = new URLSearchParams();
  const provider = document.getElementById("provider").value;
  const recipient = document.getElementById("recipient").value.trim();
  if (provider) params.set("provider", provider);
  if (recipient) params.set("recipient", recipient);
  params.set("limit", "100");
  return API + "?" + params.toString();
}

async function refresh() {
  const status = document.getElementById("status");
  let data;
  try {
    const response = await fetch(query(), { cache: "no-store" });
    data = await response.json();
    if (!response.ok) throw new Error(data.error || response.statusText);
  } catch (err) {
    status.textContent = "sandbox unreachable";
    return;
  }
  status.textContent = data.total + " message" + (data.total === 1 ? "" : "s");
  const next = data.total + ":" + data.messages.map((m) => m.seq).join(",");
  if (next === signature) return;
  signature = next;
  messages = data.messages;
  document.body.dataset.latestSeq = String(data.latest_seq);
  if (!messages.some((m) => m.seq === selected)) selected = messages.length ? messages[0].seq : null;
  renderList();
  renderDetail();
}

function renderList() {
  const list = document.getElementById("list");
  list.replaceChildren(
    ...messages.map((m) => {
      const item = el(
        "li",
        { "data-seq": String(m.seq), class: m.seq === selected ? "selected" : "" },
        el(
          "div",
          { class: "line1" },
          el("span", { class: "badge " + m.channel }, m.provider),
          el("span", { class: "who" }, (m.to && m.to.length ? m.to : m.recipients).join(", ")),
          el("span", { class: "when" }, when(m.time)),
        ),
        el("div", { class: "what" }, summary(m)),
      );
      item.addEventListener("click", () => {
        selected = m.seq;
        renderList();
        renderDetail();
      });
      return item;
    }),
  );
}

function row(dl, label, value) {
  if (value === null || value === undefined || value === "" || (Array.isArray(value) && !value.length)) return;
  dl.append(el("dt", {}, label), el("dd", {}, Array.isArray(value) ? value.join(", ") : String(value)));
}

function renderDetail() {
  const detail = document.getElementById("detail");
  const m = messages.find((x) => x.seq === selected);
  if (!m) {
    detail.replaceChildren(el("p", { class: "empty" }, "No message yet. Send one through the worker."));
    return;
  }
  const title = m.channel === "email" ? m.subject || "(no subject)" : m.channel.toUpperCase() + " to " + (m.to || m.recipients).join(", ");
  const dl = el("dl", {});
  row(dl, "provider", m.provider + " (" + m.route + ")");
  row(dl, "from", m.from);
  row(dl, "sender", m.sender);
  row(dl, "to", m.to && m.to.length ? m.to : m.recipients);
  row(dl, "cc", m.cc);
  row(dl, "bcc", m.bcc);
  row(dl, "reply to", m.reply_to);
  row(dl, "parts", m.channel === "email" ? null : m.parts);
  row(dl, "unicode", m.unicode ? "yes" : null);
  row(dl, "language", m.lang);
  row(dl, "audio", m.audio_token);
  row(dl, "report to", m.notification_email);
  row(dl, "template", m.template ? m.template.id + " " + JSON.stringify(m.template.params || {}) : null);
  row(dl, "tag", m.tag);
  row(dl, "attachments", (m.attachments || []).map((a) => a.name + (a.size !== null && a.size !== undefined ? " (" + a.size + " B)" : "")));
  row(dl, "answer", [m.answer.status, m.answer.outcome].filter((x) => x !== null && x !== undefined).join(" "));
  row(dl, "message id", m.message_id);
  row(dl, "received", new Date(m.time * 1000).toLocaleString());
  const parts = [el("h2", { id: "subject" }, title), dl];
  for (const gone of m.not_kept || []) {
    parts.push(el("p", { class: "note" }, gone.field + ": " + gone.chars + " characters, too long for the inbox; sha256 " + gone.sha256));
  }
  const hasHtml = typeof m.html === "string";
  const hasText = typeof m.text === "string";
  if (hasHtml && hasText) {
    const tabs = el("div", { class: "tabs" });
    for (const name of ["html", "text"]) {
      const button = el("button", { type: "button", class: view === name ? "on" : "" }, name);
      button.addEventListener("click", () => { view = name; renderDetail(); });
      tabs.append(button);
    }
    parts.push(tabs);
  }
  if (hasHtml && (view === "html" || !hasText)) {
    const frame = document.createElement("iframe");
    // Empty sandbox: no scripts, an opaque origin, no forms, no popups, no top navigation.
    frame.setAttribute("sandbox", "");
    frame.setAttribute("referrerpolicy", "no-referrer");
    frame.setAttribute("title", "HTML body");
    frame.srcdoc = m.html;
    parts.push(frame);
  } else if (hasText) {
    parts.push(el("div", { class: "body-text" }, m.text));
  }
  detail.replaceChildren(...parts);
}

document.addEventListener("DOMContentLoaded", () => {
  const reload = () => { signature = ""; refresh(); };
  document.getElementById("provider").addEventListener("change", reload);
  document.getElementById("recipient").addEventListener("input", reload);
  document.getElementById("filters").addEventListener("submit", (e) => e.preventDefault());
  refresh();
  setInterval(() => { if (document.getElementById("live").checked) refresh(); }, POLL_MS);
});
