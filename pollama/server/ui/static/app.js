// The chat page: conversations, streaming answers, attachments, settings, and the Models view.

import { ApiError, stream } from "./api.js";
import * as store from "./conversations.js";
import { copyText, renderMarkdown } from "./markdown.js";
import { createModel, installedModels, pullModel, refreshModels } from "./models.js";

const $ = (id) => document.getElementById(id);
const MODEL_STORAGE = "pollama.model";
const TEXT_LIMIT = 512 * 1024;

const state = {
  conversations: store.loadAll(),
  current: null,
  models: [],
  attachments: [], // {kind: "image", name, data} | {kind: "file", name, text}
  controller: null,
  busy: false,
};

// ---- conversations ---------------------------------------------------------------------------

function conversation() {
  return state.conversations.find((c) => c.id === state.current);
}

function persist() {
  const c = conversation();
  if (c) c.updated = Date.now();
  state.conversations.sort((a, b) => b.updated - a.updated);
  if (!store.saveAll(state.conversations)) showError("The browser's storage is full: this conversation is not saved.");
}

function select(id) {
  state.current = id;
  store.setCurrentId(id);
  const c = conversation();
  if (c && c.model && state.models.some((m) => m.name === c.model)) $("model-select").value = c.model;
  renderList();
  renderMessages();
  showError(null);
}

function startNew() {
  if (state.busy) stop();
  const c = store.newConversation($("model-select").value);
  state.conversations.unshift(c);
  persist();
  select(c.id);
  $("prompt").focus();
}

function renderList() {
  const list = $("conversation-list");
  list.replaceChildren();
  for (const c of state.conversations) {
    const li = document.createElement("li");
    li.dataset.id = c.id;
    if (c.id === state.current) li.className = "active";
    const open = button("title", c.title, c.title, () => {
      if (state.busy) stop();
      select(c.id);
      document.body.classList.remove("sidebar-open");
    });
    const rename = button("icon rename", "✎", "Rename", () => {
      const title = window.prompt("Rename conversation", c.title);
      if (title && title.trim()) {
        c.title = title.trim();
        persist();
        renderList();
      }
    });
    const remove = button("icon delete", "×", "Delete", () => {
      if (!window.confirm(`Delete “${c.title}”?`)) return;
      if (state.busy && c.id === state.current) stop();
      state.conversations = state.conversations.filter((x) => x.id !== c.id);
      persist();
      if (c.id === state.current) {
        if (state.conversations.length) select(state.conversations[0].id);
        else startNew();
      } else {
        renderList();
      }
    });
    li.append(open, rename, remove);
    list.append(li);
  }
}

function exportConversations() {
  const blob = new Blob([store.exportText(state.conversations)], { type: "application/json" });
  const a = document.createElement("a");
  a.href = URL.createObjectURL(blob);
  a.download = `pollama-conversations-${new Date().toISOString().slice(0, 10)}.json`;
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(a.href), 10000);
}

async function importConversations(file) {
  try {
    const imported = store.parseImport(await file.text());
    state.conversations.unshift(...imported);
    persist();
    select(imported[0].id);
  } catch (error) {
    showError(`Import failed: ${error.message}`);
  }
}

// ---- messages --------------------------------------------------------------------------------

function renderMessages() {
  const box = $("messages");
  box.replaceChildren();
  const c = conversation();
  if (!c) return;
  if (!c.messages.length) {
    const hint = document.createElement("p");
    hint.className = "empty muted";
    hint.textContent = state.models.length
      ? "Ask anything. Attach images (drag and drop, paste or +) and text files."
      : "No model installed: pull one in Models.";
    box.append(hint);
  }
  c.messages.forEach((m, index) => box.append(messageNode(c, m, index)));
  box.scrollTop = box.scrollHeight;
}

function messageNode(c, m, index) {
  const node = document.createElement("article");
  node.className = `message ${m.role}`;
  node.dataset.index = String(index);
  const body = document.createElement("div");
  body.className = "body";
  fillBody(body, m);
  node.append(body);
  const tools = document.createElement("div");
  tools.className = "tools";
  if (m.role === "user") {
    tools.append(toolButton("Edit", "edit", () => editMessage(node, c, index)));
  } else if (m.role === "assistant") {
    tools.append(toolButton("Copy", "copy-answer", (event) => copyText(m.content, event.currentTarget)));
    if (index === c.messages.length - 1) tools.append(toolButton("Regenerate", "regenerate", () => regenerate()));
    if (m.stats) tools.append(statsNode(m.stats));
  }
  if (m.error) {
    const error = document.createElement("div");
    error.className = "error";
    error.textContent = m.error;
    node.append(error);
  }
  node.append(tools);
  return node;
}

function button(className, text, title, onClick) {
  const b = document.createElement("button");
  b.type = "button";
  b.className = className;
  b.textContent = text;
  if (title) b.title = title;
  b.addEventListener("click", onClick);
  return b;
}

function toolButton(label, className, onClick) {
  return button(`small ${className}`, label, "", onClick);
}

function fillBody(body, m) {
  body.replaceChildren();
  if (m.thinking) {
    const details = document.createElement("details");
    details.className = "thinking";
    const summary = document.createElement("summary");
    summary.textContent = m.content ? "Thoughts" : "Thinking…";
    const text = document.createElement("div");
    text.className = "thinking-text";
    text.textContent = m.thinking;
    details.append(summary, text);
    body.append(details);
  }
  if (m.images && m.images.length) {
    const row = document.createElement("div");
    row.className = "images";
    for (const data of m.images) {
      const img = document.createElement("img");
      img.alt = "attached image";
      img.src = `data:${imageType(data)};base64,${data}`;
      row.append(img);
    }
    body.append(row);
  }
  if (m.files && m.files.length) {
    const row = document.createElement("div");
    row.className = "files";
    for (const f of m.files) row.append(chip(f.name));
    body.append(row);
  }
  const content = document.createElement("div");
  content.className = "content";
  if (m.role === "assistant") content.append(renderMarkdown(m.content));
  else content.textContent = m.content;
  body.append(content);
}

function imageType(base64) {
  if (base64.startsWith("/9j/")) return "image/jpeg";
  if (base64.startsWith("R0lG")) return "image/gif";
  if (base64.startsWith("UklG")) return "image/webp";
  return "image/png";
}

function chip(text) {
  const span = document.createElement("span");
  span.className = "chip";
  span.textContent = text;
  return span;
}

function statsNode(s) {
  const span = document.createElement("span");
  span.className = "stats";
  const parts = [];
  const evalCount = Number(s.eval_count) || 0;
  const evalSeconds = (Number(s.eval_duration) || 0) / 1e9;
  if (evalCount && evalSeconds) parts.push(`${(evalCount / evalSeconds).toFixed(1)} tokens/s`);
  parts.push(`prompt ${Number(s.prompt_eval_count) || 0} tokens`);
  parts.push(`answer ${evalCount} tokens`);
  if (s.done_reason && s.done_reason !== "stop") parts.push(String(s.done_reason));
  span.textContent = parts.join(" · ");
  return span;
}

function editMessage(node, c, index) {
  if (state.busy) return;
  const m = c.messages[index];
  const area = document.createElement("textarea");
  area.className = "edit-area";
  area.value = m.content;
  const save = toolButton("Save & send", "save-edit primary", () => {
    m.content = area.value;
    c.messages = c.messages.slice(0, index + 1);
    persist();
    renderMessages();
    generate();
  });
  const cancel = toolButton("Cancel", "cancel-edit", () => renderMessages());
  area.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      save.click();
    } else if (event.key === "Escape") {
      cancel.click();
    }
  });
  const tools = document.createElement("div");
  tools.className = "tools";
  tools.append(save, cancel);
  node.replaceChildren(area, tools);
  area.focus();
}

// ---- sending ---------------------------------------------------------------------------------

function apiMessages(c) {
  const messages = [];
  if (c.system) messages.push({ role: "system", content: c.system });
  for (const m of c.messages) {
    let content = m.content;
    for (const f of m.files || []) content += `\n\n--- ${f.name} ---\n${f.text}\n--- end of ${f.name} ---`;
    const message = { role: m.role, content };
    if (m.images && m.images.length) message.images = m.images;
    messages.push(message);
  }
  return messages;
}

function send() {
  const c = conversation();
  const text = $("prompt").value;
  if (state.busy || (!text.trim() && !state.attachments.length)) return;
  if (!$("model-select").value) {
    showError("Pick a model first (or pull one in Models).");
    return;
  }
  const message = { role: "user", content: text };
  const images = state.attachments.filter((a) => a.kind === "image").map((a) => a.data);
  const files = state.attachments.filter((a) => a.kind === "file").map((a) => ({ name: a.name, text: a.text }));
  if (images.length) message.images = images;
  if (files.length) message.files = files;
  c.messages.push(message);
  if (c.title === "New chat") c.title = (text.trim() || files[0]?.name || "Image").slice(0, 48);
  $("prompt").value = "";
  autosize();
  state.attachments = [];
  renderAttachments();
  persist();
  renderList();
  renderMessages();
  generate();
}

function regenerate() {
  const c = conversation();
  if (state.busy || !c.messages.length) return;
  if (c.messages[c.messages.length - 1].role === "assistant") c.messages.pop();
  persist();
  renderMessages();
  generate();
}

async function generate() {
  const c = conversation();
  c.model = $("model-select").value;
  const answer = { role: "assistant", content: "" };
  const body = { model: c.model, messages: apiMessages(c), stream: true };
  if (Object.keys(c.options).length) body.options = { ...c.options };
  c.messages.push(answer);
  renderMessages();
  const node = $("messages").lastElementChild;
  node.classList.add("streaming");
  const bodyNode = node.querySelector(".body");
  const controller = new AbortController();
  state.controller = controller;
  setBusy(true);
  let scheduled = false;
  const paint = () => {
    scheduled = false;
    const box = $("messages");
    const atBottom = box.scrollHeight - box.scrollTop - box.clientHeight < 40;
    fillBody(bodyNode, answer);
    if (atBottom) box.scrollTop = box.scrollHeight;
  };
  try {
    await stream(
      "/api/chat",
      body,
      (event) => {
        if (event.message) {
          answer.content += event.message.content || "";
          if (event.message.thinking) answer.thinking = (answer.thinking || "") + event.message.thinking;
        }
        if (event.done) {
          answer.stats = {
            eval_count: event.eval_count,
            eval_duration: event.eval_duration,
            prompt_eval_count: event.prompt_eval_count,
            prompt_eval_duration: event.prompt_eval_duration,
            total_duration: event.total_duration,
            done_reason: event.done_reason,
          };
        }
        if (!scheduled) {
          scheduled = true;
          requestAnimationFrame(paint);
        }
      },
      controller.signal,
    );
  } catch (error) {
    if (error.name === "AbortError") answer.stopped = true;
    else answer.error = error instanceof ApiError ? error.message : String(error.message || error);
  } finally {
    state.controller = null;
    setBusy(false);
    if (!answer.stats && !answer.stopped && !answer.error) answer.error = "(no answer)";
    if (answer.stopped) answer.stats = { ...(answer.stats || {}), done_reason: "stopped" };
    const index = c.messages.indexOf(answer);
    if (answer.error && !answer.content && index >= 0) {
      c.messages.splice(index, 1);
      showError(answer.error);
    }
    persist();
    if (state.current === c.id) renderMessages();
  }
}

function stop() {
  if (state.controller) state.controller.abort();
}

function setBusy(busy) {
  state.busy = busy;
  $("send").hidden = busy;
  $("stop").hidden = !busy;
  document.body.classList.toggle("busy", busy);
}

function showError(text) {
  const box = $("chat-error");
  box.hidden = !text;
  box.textContent = text || "";
}

// ---- attachments -----------------------------------------------------------------------------

async function attach(files) {
  for (const file of files) {
    if (file.type.startsWith("image/")) {
      const data = await readBase64(file);
      state.attachments.push({ kind: "image", name: file.name || "pasted image", data });
    } else if (file.size > TEXT_LIMIT) {
      showError(`${file.name} is too large to inline (limit ${TEXT_LIMIT / 1024} KiB).`);
    } else {
      const text = await file.text();
      if (text.includes("\u0000")) showError(`${file.name} is not a text file.`);
      else state.attachments.push({ kind: "file", name: file.name, text });
    }
  }
  renderAttachments();
}

function readBase64(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(String(reader.result).split(",", 2)[1] || "");
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(file);
  });
}

function renderAttachments() {
  const box = $("attachments");
  box.replaceChildren();
  state.attachments.forEach((a, i) => {
    const item = chip(a.name);
    item.classList.add("attachment");
    if (a.kind === "image") {
      const img = document.createElement("img");
      img.src = `data:${imageType(a.data)};base64,${a.data}`;
      img.alt = a.name;
      item.prepend(img);
    }
    const remove = button("icon", "×", "Remove", () => {
      state.attachments.splice(i, 1);
      renderAttachments();
    });
    item.append(remove);
    box.append(item);
  });
}

// ---- settings and models ---------------------------------------------------------------------

const OPTION_FIELDS = ["temperature", "num_ctx", "seed", "num_predict"];

function openSettings() {
  const c = conversation();
  $("set-system").value = c.system;
  for (const key of OPTION_FIELDS) $(`set-${key}`).value = c.options[key] ?? "";
  $("settings-dialog").showModal();
}

function saveSettings() {
  const c = conversation();
  c.system = $("set-system").value;
  c.options = {};
  for (const key of OPTION_FIELDS) {
    const raw = $(`set-${key}`).value.trim();
    if (raw !== "" && Number.isFinite(Number(raw))) c.options[key] = Number(raw);
  }
  persist();
}

function setModels(models) {
  state.models = models;
  const picker = $("model-select");
  const wanted = conversation()?.model || localStorage.getItem(MODEL_STORAGE) || picker.value;
  picker.replaceChildren();
  for (const m of models) {
    const option = document.createElement("option");
    option.value = m.name;
    const tags = m.capabilities.filter((x) => x === "vision" || x === "thinking");
    option.textContent = tags.length ? `${m.name} (${tags.join(", ")})` : m.name;
    picker.append(option);
  }
  if (!models.length) {
    const option = document.createElement("option");
    option.value = "";
    option.textContent = "no models";
    picker.append(option);
  }
  if (models.some((m) => m.name === wanted)) picker.value = wanted;
  if (conversation() && !conversation().messages.length) renderMessages();
}

function showView(name) {
  const models = name === "models";
  $("chat-view").hidden = models;
  $("models-view").hidden = !models;
  $("tab-chat").setAttribute("aria-selected", String(!models));
  $("tab-models").setAttribute("aria-selected", String(models));
  if (models) refreshModels(setModels);
}

// ---- wiring ----------------------------------------------------------------------------------

function autosize() {
  const area = $("prompt");
  area.style.height = "auto";
  area.style.height = `${Math.min(area.scrollHeight, 240)}px`;
}

function wire() {
  $("composer").addEventListener("submit", (event) => {
    event.preventDefault();
    send();
  });
  $("prompt").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      send();
    }
  });
  $("prompt").addEventListener("input", autosize);
  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && state.busy) {
      event.preventDefault();
      stop();
    }
  });
  $("stop").addEventListener("click", stop);
  $("new-chat").addEventListener("click", startNew);
  $("toggle-sidebar").addEventListener("click", () => document.body.classList.toggle("sidebar-open"));
  $("export-chats").addEventListener("click", exportConversations);
  $("import-chats").addEventListener("change", (event) => {
    const [file] = event.target.files;
    if (file) importConversations(file);
    event.target.value = "";
  });
  $("attach").addEventListener("change", (event) => {
    attach([...event.target.files]);
    event.target.value = "";
  });
  const chatView = $("chat-view");
  chatView.addEventListener("dragover", (event) => {
    event.preventDefault();
    chatView.classList.add("dragging");
  });
  chatView.addEventListener("dragleave", () => chatView.classList.remove("dragging"));
  chatView.addEventListener("drop", (event) => {
    event.preventDefault();
    chatView.classList.remove("dragging");
    attach([...event.dataTransfer.files]);
  });
  $("prompt").addEventListener("paste", (event) => {
    const files = [...(event.clipboardData?.files || [])];
    if (files.length) {
      event.preventDefault();
      attach(files);
    }
  });
  $("model-select").addEventListener("change", () => {
    localStorage.setItem(MODEL_STORAGE, $("model-select").value);
    const c = conversation();
    if (c) {
      c.model = $("model-select").value;
      persist();
    }
  });
  // Enter in a dialog's field submits with its Save button; Cancel only closes.
  for (const button of document.querySelectorAll("dialog .dialog-cancel")) {
    button.addEventListener("click", () => button.closest("dialog").close("cancel"));
  }
  $("open-settings").addEventListener("click", openSettings);
  $("settings-dialog").addEventListener("close", () => {
    if ($("settings-dialog").returnValue === "save") saveSettings();
  });
  $("tab-chat").addEventListener("click", () => showView("chat"));
  $("tab-models").addEventListener("click", () => showView("models"));
  $("pull-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const name = $("pull-name").value.trim();
    if (name) pullModel(name, setModels);
  });
  $("create-form").addEventListener("submit", (event) => {
    event.preventDefault();
    createModel($("create-name").value.trim(), $("create-modelfile").value, setModels);
  });
}

async function main() {
  wire();
  const saved = store.currentId();
  if (state.conversations.some((c) => c.id === saved)) select(saved);
  else if (state.conversations.length) select(state.conversations[0].id);
  else startNew();
  try {
    setModels(await installedModels());
  } catch (error) {
    showError(`Could not list the models: ${error.message}`);
  }
  document.body.dataset.ready = "true";
}

main();
