/* DOM helpers: look up by id, build elements. Styles are never set as attributes (the
 * Content-Security-Policy refuses inline style attributes); set `node.style.x` instead. */

export const $ = (id) => document.getElementById(id);

// el("a", {href: "#", class: "x", text: "label"}, child, ...): attributes whose value is
// null, undefined or false are left out; `true` sets an empty attribute.
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children) if (c !== null && c !== undefined && c !== false) node.append(c);
  return node;
}

// Show exactly one of the page's views (sections with class "view").
export function showView(id) {
  for (const v of document.querySelectorAll("main > .view")) v.hidden = v.id !== id;
}
