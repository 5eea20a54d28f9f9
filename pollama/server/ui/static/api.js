// The server's API as the page uses it: same-origin fetches, an API key asked for on the first 401
// (kept in localStorage and sent as `Authorization: Bearer`), and NDJSON streams read line by line.

const KEY_STORAGE = "pollama.apiKey";
let asking = null;

/** An error the server answered with (its `{"error": ...}` message and HTTP status). */
export class ApiError extends Error {
  constructor(message, status) {
    super(message);
    this.status = status;
  }
}

function headers(extra) {
  const result = { ...extra };
  const key = localStorage.getItem(KEY_STORAGE);
  if (key) result.Authorization = `Bearer ${key}`;
  return result;
}

// Ask for a key once for every request that got a 401 at the same time.
function askForKey(wrong) {
  if (!asking) {
    asking = new Promise((resolve) => {
      const dialog = document.getElementById("key-dialog");
      const input = document.getElementById("key-input");
      document.getElementById("key-message").textContent = wrong
        ? "That key was refused. Enter an API key for this server."
        : "This server asks for an API key.";
      input.value = "";
      const done = () => {
        dialog.removeEventListener("close", done);
        const key = dialog.returnValue === "save" ? input.value.trim() : "";
        if (key) localStorage.setItem(KEY_STORAGE, key);
        asking = null;
        resolve(Boolean(key));
      };
      dialog.addEventListener("close", done);
      dialog.returnValue = "";
      dialog.showModal();
      input.focus();
    });
  }
  return asking;
}

/** fetch(path) with the key; on a 401 asks for a key and tries again. Throws ApiError on an error status. */
export async function request(path, { method = "GET", body, signal } = {}) {
  for (;;) {
    const init = { method, signal, headers: headers(body === undefined ? {} : { "Content-Type": "application/json" }) };
    if (body !== undefined) init.body = JSON.stringify(body);
    const response = await fetch(path, init);
    if (response.status === 401) {
      const hadKey = Boolean(localStorage.getItem(KEY_STORAGE));
      if (await askForKey(hadKey)) continue;
      throw new ApiError("unauthorized", 401);
    }
    if (!response.ok) {
      let message = `${response.status} ${response.statusText}`;
      try {
        const data = await response.json();
        if (data && data.error) message = typeof data.error === "string" ? data.error : JSON.stringify(data.error);
      } catch {
        // not JSON: keep the status line
      }
      throw new ApiError(message, response.status);
    }
    return response;
  }
}

/** The JSON answer of a request. */
export async function json(path, options) {
  const response = await request(path, options);
  return response.json();
}

/** POST `body` to a streaming endpoint and call `onEvent` with each NDJSON object as it arrives. */
export async function stream(path, body, onEvent, signal) {
  const response = await request(path, { method: "POST", body, signal });
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let newline;
    while ((newline = buffer.indexOf("\n")) >= 0) {
      const line = buffer.slice(0, newline).trim();
      buffer = buffer.slice(newline + 1);
      if (line) emit(line, onEvent);
    }
  }
  buffer += decoder.decode();
  if (buffer.trim()) emit(buffer.trim(), onEvent);
}

function emit(line, onEvent) {
  const event = JSON.parse(line);
  if (event.error) throw new ApiError(event.error, 200);
  onEvent(event);
}
