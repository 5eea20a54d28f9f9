// Conversations kept in the browser (localStorage): load, save, import and export as JSON.

const STORAGE = "pollama.conversations";
const CURRENT = "pollama.current";
const ROLES = new Set(["user", "assistant", "system"]);

/** A fresh conversation for `model`. */
export function newConversation(model) {
  return {
    id: crypto.randomUUID ? crypto.randomUUID() : `${Date.now()}-${Math.random().toString(16).slice(2)}`,
    title: "New chat",
    model: model || "",
    system: "",
    options: {},
    messages: [],
    created: Date.now(),
    updated: Date.now(),
  };
}

/** Every saved conversation, newest first. */
export function loadAll() {
  try {
    const list = JSON.parse(localStorage.getItem(STORAGE) || "[]");
    return Array.isArray(list) ? list.map(clean).filter(Boolean) : [];
  } catch {
    return [];
  }
}

/** Save `list`; returns false when the browser's storage is full. */
export function saveAll(list) {
  try {
    localStorage.setItem(STORAGE, JSON.stringify(list));
    return true;
  } catch {
    return false;
  }
}

export function currentId() {
  return localStorage.getItem(CURRENT);
}

export function setCurrentId(id) {
  localStorage.setItem(CURRENT, id);
}

/** Conversations from an imported JSON text: one conversation, a list, or `{"conversations": [...]}`. */
export function parseImport(text) {
  const data = JSON.parse(text);
  const items = Array.isArray(data) ? data : Array.isArray(data.conversations) ? data.conversations : [data];
  const result = [];
  for (const item of items) {
    const conversation = clean(item);
    if (!conversation) throw new Error("not a conversation export: each needs a list of messages");
    conversation.id = newConversation("").id; // never overwrite an existing one
    result.push(conversation);
  }
  return result;
}

/** The export file's content for `list`. */
export function exportText(list) {
  return JSON.stringify({ format: "pollama-conversations", version: 1, conversations: list }, null, 2);
}

// Keep only well-formed fields: everything here may come from an imported file.
function clean(item) {
  if (!item || typeof item !== "object" || !Array.isArray(item.messages)) return null;
  const base = newConversation(typeof item.model === "string" ? item.model : "");
  const options = {};
  for (const key of ["temperature", "num_ctx", "seed", "num_predict"]) {
    const value = item.options && item.options[key];
    if (typeof value === "number" && Number.isFinite(value)) options[key] = value;
  }
  const messages = [];
  for (const m of item.messages) {
    if (!m || !ROLES.has(m.role) || typeof m.content !== "string") return null;
    const message = { role: m.role, content: m.content };
    if (typeof m.thinking === "string" && m.thinking) message.thinking = m.thinking;
    if (Array.isArray(m.images)) message.images = m.images.filter((x) => typeof x === "string");
    if (Array.isArray(m.files)) {
      message.files = m.files
        .filter((f) => f && typeof f.name === "string" && typeof f.text === "string")
        .map((f) => ({ name: f.name, text: f.text }));
    }
    if (m.stats && typeof m.stats === "object") message.stats = m.stats;
    messages.push(message);
  }
  return {
    ...base,
    id: typeof item.id === "string" ? item.id : base.id,
    title: typeof item.title === "string" && item.title ? item.title : base.title,
    system: typeof item.system === "string" ? item.system : "",
    options,
    messages,
    created: Number(item.created) || base.created,
    updated: Number(item.updated) || base.updated,
  };
}
