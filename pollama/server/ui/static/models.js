// The Models view: installed models (with /api/show's details), loaded ones (/api/ps), pull with a
// progress bar, delete, and create from a Modelfile typed in the page.

import { json, request, stream } from "./api.js";

const $ = (id) => document.getElementById(id);

/** A byte count as Ollama's CLI shows it (decimal units). */
export function formatSize(bytes) {
  const units = ["B", "KB", "MB", "GB", "TB"];
  let value = Number(bytes) || 0;
  let unit = 0;
  while (value >= 1000 && unit < units.length - 1) {
    value /= 1000;
    unit += 1;
  }
  return `${unit === 0 ? value : value.toFixed(value < 10 ? 1 : 0)} ${units[unit]}`;
}

function cell(row, text) {
  const td = document.createElement("td");
  td.textContent = text;
  row.append(td);
  return td;
}

function showError(error) {
  const box = $("models-error");
  box.hidden = !error;
  box.textContent = error ? String(error.message || error) : "";
}

/** Installed models with their details, as the model picker and the Models view use them. */
export async function installedModels() {
  const { models } = await json("/api/tags");
  const shown = await Promise.all(
    models.map((m) => json("/api/show", { method: "POST", body: { model: m.name } }).catch(() => ({}))),
  );
  return models.map((m, i) => ({ ...m, capabilities: shown[i].capabilities || [] }));
}

/** Refresh both tables; `onChange` gets the installed list (for the model picker). */
export async function refreshModels(onChange) {
  showError(null);
  try {
    const models = await installedModels();
    const body = $("installed").querySelector("tbody");
    body.replaceChildren();
    for (const m of models) {
      const row = document.createElement("tr");
      row.dataset.model = m.name;
      cell(row, m.name);
      cell(row, formatSize(m.size));
      cell(row, (m.details && m.details.family) || "");
      cell(row, (m.details && m.details.quantization_level) || "");
      cell(row, m.capabilities.join(", "));
      const actions = cell(row, "");
      const remove = document.createElement("button");
      remove.type = "button";
      remove.className = "danger delete-model";
      remove.textContent = "Delete";
      remove.addEventListener("click", () => deleteModel(m.name, onChange));
      actions.append(remove);
      body.append(row);
    }
    if (!models.length) emptyRow(body, 6, "No models installed yet: pull one below.");
    if (onChange) onChange(models);
    const { models: loaded } = await json("/api/ps");
    const loadedBody = $("loaded").querySelector("tbody");
    loadedBody.replaceChildren();
    for (const m of loaded) {
      const row = document.createElement("tr");
      row.dataset.model = m.name;
      cell(row, m.name);
      const vram = m.size_vram ? ` (${formatSize(m.size_vram)} GPU)` : "";
      cell(row, formatSize(m.size) + vram);
      cell(row, m.context_length ? String(m.context_length) : "");
      cell(row, m.expires_at ? new Date(m.expires_at).toLocaleString() : "");
      loadedBody.append(row);
    }
    if (!loaded.length) emptyRow(loadedBody, 4, "No model is loaded.");
  } catch (error) {
    showError(error);
  }
}

function emptyRow(body, span, text) {
  const row = document.createElement("tr");
  const td = cell(row, text);
  td.colSpan = span;
  td.className = "muted";
  body.append(row);
}

async function deleteModel(name, onChange) {
  if (!window.confirm(`Delete ${name}?`)) return;
  try {
    await request("/api/delete", { method: "DELETE", body: { model: name } });
  } catch (error) {
    showError(error);
  }
  await refreshModels(onChange);
}

/** Pull `name` with the progress bar following the download. */
export async function pullModel(name, onChange) {
  showError(null);
  const bar = $("pull-progress");
  const percent = $("pull-percent");
  const text = $("pull-text");
  $("pull-status").hidden = false;
  bar.value = 0;
  percent.textContent = "0%";
  text.textContent = "pulling manifest";
  try {
    await stream("/api/pull", { model: name, stream: true }, (event) => {
      text.textContent = event.status || "";
      if (event.total) {
        const value = Math.min(100, Math.floor((100 * (event.completed || 0)) / event.total));
        bar.value = value;
        percent.textContent = `${value}%`;
      }
      if (event.status === "success") {
        bar.value = 100;
        percent.textContent = "100%";
      }
    });
  } catch (error) {
    text.textContent = "failed";
    showError(error);
  }
  await refreshModels(onChange);
}

/** The /api/create body for a Modelfile: FROM, SYSTEM, TEMPLATE, PARAMETER, MESSAGE, LICENSE. */
export function parseModelfile(text) {
  const body = {};
  const parameters = {};
  const messages = [];
  const lines = text.replace(/\r\n?/g, "\n").split("\n");
  for (let i = 0; i < lines.length; i += 1) {
    const line = lines[i].trim();
    if (!line || line.startsWith("#")) continue;
    const match = /^(\w+)\s+([\s\S]*)$/.exec(line);
    if (!match) throw new Error(`line ${i + 1}: expected INSTRUCTION arguments`);
    const instruction = match[1].toUpperCase();
    let rest = match[2];
    // A """ value may span lines.
    const quoted = (value) => {
      if (!value.startsWith('"""')) return value.replace(/^"(.*)"$/s, "$1");
      let all = value.slice(3);
      while (!all.includes('"""')) {
        i += 1;
        if (i >= lines.length) throw new Error('unterminated """');
        all += `\n${lines[i]}`;
      }
      return all.slice(0, all.indexOf('"""'));
    };
    switch (instruction) {
      case "FROM":
        body.from = rest.trim();
        break;
      case "SYSTEM":
        body.system = quoted(rest);
        break;
      case "TEMPLATE":
        body.template = quoted(rest);
        break;
      case "LICENSE":
        body.license = quoted(rest);
        break;
      case "PARAMETER": {
        const p = /^(\w+)\s+([\s\S]+)$/.exec(rest);
        if (!p) throw new Error(`line ${i + 1}: PARAMETER needs a name and a value`);
        const key = p[1].toLowerCase();
        const value = quoted(p[2].trim());
        if (key === "stop") (parameters.stop ||= []).push(value);
        else if (/^-?\d+(\.\d+)?$/.test(value)) parameters[key] = Number(value);
        else if (value === "true" || value === "false") parameters[key] = value === "true";
        else parameters[key] = value;
        break;
      }
      case "MESSAGE": {
        const m = /^(\w+)\s+([\s\S]*)$/.exec(rest);
        if (!m) throw new Error(`line ${i + 1}: MESSAGE needs a role and a text`);
        rest = quoted(m[2]);
        messages.push({ role: m[1].toLowerCase(), content: rest });
        break;
      }
      default:
        throw new Error(`line ${i + 1}: unknown instruction ${instruction}`);
    }
  }
  if (!body.from) throw new Error("a Modelfile needs a FROM line");
  if (Object.keys(parameters).length) body.parameters = parameters;
  if (messages.length) body.messages = messages;
  return body;
}

/** Create `name` from the Modelfile `text`, showing the server's status lines. */
export async function createModel(name, text, onChange) {
  showError(null);
  const status = $("create-status");
  try {
    const body = { model: name, stream: true, ...parseModelfile(text) };
    status.textContent = "creating…";
    await stream("/api/create", body, (event) => {
      status.textContent = event.status || "";
    });
  } catch (error) {
    status.textContent = "";
    showError(error);
  }
  await refreshModels(onChange);
}
