// A small Markdown renderer that builds DOM nodes only (createElement + textContent), never HTML
// strings: model output is untrusted, and text put in through textContent cannot become markup.
// Covers what chat answers use: headings, paragraphs, lists, block quotes, rules, fenced code blocks
// (with a copy button), inline code, emphasis, strong and links (http, https and mailto only).

const SAFE_LINK = /^(https?:|mailto:)/i;

/** Render `source` into a new DocumentFragment. */
export function renderMarkdown(source) {
  const fragment = document.createDocumentFragment();
  const lines = String(source).replace(/\r\n?/g, "\n").split("\n");
  let i = 0;
  while (i < lines.length) {
    const line = lines[i];
    const fence = /^ {0,3}(`{3,}|~{3,})\s*([\w+#.-]*)/.exec(line);
    if (fence) {
      const body = [];
      i += 1;
      while (i < lines.length && !lines[i].trimStart().startsWith(fence[1])) {
        body.push(lines[i]);
        i += 1;
      }
      i += 1; // the closing fence (or the end of a block still streaming in)
      fragment.append(codeBlock(body.join("\n"), fence[2]));
      continue;
    }
    const heading = /^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$/.exec(line);
    if (heading) {
      const h = document.createElement(`h${heading[1].length}`);
      appendInline(h, heading[2]);
      fragment.append(h);
      i += 1;
      continue;
    }
    if (/^ {0,3}([-*_])(\s*\1){2,}\s*$/.test(line)) {
      fragment.append(document.createElement("hr"));
      i += 1;
      continue;
    }
    if (/^ {0,3}>/.test(line)) {
      const quoted = [];
      while (i < lines.length && /^ {0,3}>/.test(lines[i])) {
        quoted.push(lines[i].replace(/^ {0,3}> ?/, ""));
        i += 1;
      }
      const quote = document.createElement("blockquote");
      quote.append(renderMarkdown(quoted.join("\n")));
      fragment.append(quote);
      continue;
    }
    const item = listItem(line);
    if (item) {
      const list = document.createElement(item.ordered ? "ol" : "ul");
      if (item.ordered && item.start !== 1) list.start = item.start;
      let li = null;
      while (i < lines.length) {
        const next = listItem(lines[i]);
        if (next && next.ordered === item.ordered) {
          li = document.createElement("li");
          appendInline(li, next.text);
          list.append(li);
        } else if (li && /^\s{2,}\S/.test(lines[i])) {
          li.append(document.createElement("br"));
          appendInline(li, lines[i].trim());
        } else {
          break;
        }
        i += 1;
      }
      fragment.append(list);
      continue;
    }
    if (line.trim() === "") {
      i += 1;
      continue;
    }
    const paragraph = document.createElement("p");
    let first = true;
    while (i < lines.length && lines[i].trim() !== "" && !startsBlock(lines[i])) {
      if (!first) paragraph.append(document.createElement("br"));
      appendInline(paragraph, lines[i]);
      first = false;
      i += 1;
    }
    fragment.append(paragraph);
  }
  return fragment;
}

function listItem(line) {
  const bullet = /^ {0,3}[-*+]\s+(.*)$/.exec(line);
  if (bullet) return { ordered: false, text: bullet[1] };
  const numbered = /^ {0,3}(\d{1,9})[.)]\s+(.*)$/.exec(line);
  if (numbered) return { ordered: true, start: Number(numbered[1]), text: numbered[2] };
  return null;
}

function startsBlock(line) {
  return /^ {0,3}(`{3,}|~{3,}|#{1,6}\s|>)/.test(line) || listItem(line) !== null;
}

function codeBlock(text, language) {
  const wrap = document.createElement("div");
  wrap.className = "code-block";
  const bar = document.createElement("div");
  bar.className = "code-bar";
  const label = document.createElement("span");
  label.textContent = language || "code";
  const copy = document.createElement("button");
  copy.type = "button";
  copy.className = "copy";
  copy.textContent = "Copy";
  copy.addEventListener("click", () => copyText(text, copy));
  bar.append(label, copy);
  const pre = document.createElement("pre");
  const code = document.createElement("code");
  code.textContent = text;
  pre.append(code);
  wrap.append(bar, pre);
  return wrap;
}

/** Copy `text` to the clipboard (also on plain-HTTP LAN addresses, where navigator.clipboard is absent). */
export async function copyText(text, button) {
  let done = false;
  if (navigator.clipboard && window.isSecureContext) {
    try {
      await navigator.clipboard.writeText(text);
      done = true;
    } catch {
      done = false;
    }
  }
  if (!done) {
    const area = document.createElement("textarea");
    area.value = text;
    area.setAttribute("readonly", "");
    area.style.position = "fixed";
    area.style.opacity = "0";
    document.body.append(area);
    area.select();
    try {
      done = document.execCommand("copy");
    } catch {
      done = false;
    }
    area.remove();
  }
  if (button) {
    button.textContent = done ? "Copied" : "Copy failed";
    setTimeout(() => {
      button.textContent = "Copy";
    }, 1500);
  }
}

// Inline spans, longest-first: code, links, strong, emphasis. Everything else is text.
const INLINE = [
  { re: /`([^`]+)`/y, make: (m) => element("code", m[1]) },
  { re: /\[([^\]\n]+)\]\(([^)\s]+)(?:\s+"[^"]*")?\)/y, make: (m) => link(m[1], m[2]) },
  { re: /\*\*(?=\S)([\s\S]*?\S)\*\*/y, make: (m) => nested("strong", m[1]) },
  { re: /(?<![\w])__(?=\S)([\s\S]*?\S)__(?![\w])/y, make: (m) => nested("strong", m[1]) },
  { re: /\*(?=[^\s*])([^*]*?[^\s*])\*/y, make: (m) => nested("em", m[1]) },
  { re: /(?<![\w])_(?=[^\s_])([^_]*?[^\s_])_(?![\w])/y, make: (m) => nested("em", m[1]) },
  { re: /~~(?=\S)([\s\S]*?\S)~~/y, make: (m) => nested("del", m[1]) },
];

function appendInline(parent, text) {
  let plain = "";
  let at = 0;
  const flush = () => {
    if (plain) parent.append(document.createTextNode(plain));
    plain = "";
  };
  while (at < text.length) {
    let matched = false;
    if ("`[*_~".includes(text[at])) {
      for (const rule of INLINE) {
        rule.re.lastIndex = at;
        const m = rule.re.exec(text);
        if (m) {
          flush();
          parent.append(rule.make(m));
          at = rule.re.lastIndex;
          matched = true;
          break;
        }
      }
    } else if (text[at] === "\\" && at + 1 < text.length && /[\\`*_[\]()#+\-.!~>]/.test(text[at + 1])) {
      plain += text[at + 1];
      at += 2;
      continue;
    }
    if (!matched) {
      plain += text[at];
      at += 1;
    }
  }
  flush();
}

function element(tag, text) {
  const node = document.createElement(tag);
  node.textContent = text;
  return node;
}

function nested(tag, text) {
  const node = document.createElement(tag);
  appendInline(node, text);
  return node;
}

function link(text, href) {
  if (!SAFE_LINK.test(href)) return document.createTextNode(`[${text}](${href})`);
  const a = document.createElement("a");
  a.href = href;
  a.target = "_blank";
  a.rel = "noopener noreferrer nofollow";
  appendInline(a, text);
  return a;
}
