// A reply's Markdown as HTML: marked (GitHub-flavoured, line breaks kept) and then DOMPurify, so
// whatever the model writes — raw HTML, event handlers, javascript: links — renders inert (and
// no image is fetched from elsewhere: nothing leaves the device). Code blocks get a Copy button.
import { Marked } from "./vendor/marked.esm.js";
import DOMPurify from "./vendor/purify.es.js";

const markdown = new Marked({ gfm: true, breaks: true });

/** Sanitized HTML for the Markdown `text`. */
export function markdownToHtml(text) {
  return DOMPurify.sanitize(markdown.parse(text), { FORBID_TAGS: ["style", "form", "input", "button", "img"] });
}

/** Shows `text` as Markdown in `element`, with a Copy button on each code block. */
export function renderMarkdown(element, text) {
  element.innerHTML = markdownToHtml(text);
  for (const link of element.querySelectorAll("a[href]")) {
    link.target = "_blank";
    link.rel = "noopener noreferrer";
  }
  for (const block of element.querySelectorAll("pre")) {
    const copy = document.createElement("button");
    copy.type = "button";
    copy.className = "copy";
    copy.textContent = "Copy";
    copy.title = "Copy the code";
    block.prepend(copy);
  }
}

/** Copies the code block of a clicked Copy button to the clipboard, and says whether it did. */
export async function copyCode(button) {
  const code = button.closest("pre")?.querySelector("code") ?? button.closest("pre");
  try {
    await navigator.clipboard.writeText(code.textContent);
    button.textContent = "Copied";
  } catch {
    button.textContent = "Copy failed";
  }
  setTimeout(() => (button.textContent = "Copy"), 1500);
}
