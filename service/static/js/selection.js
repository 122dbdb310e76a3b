/* The jobs chosen for comparison: ticked in the job list or in a sweep's table (one
 * selection for the whole page), compared at #/compare/<id>,<id>,... */

import { $ } from "./dom.js";

const chosen = new Set();
const listeners = new Set();

export const isSelected = (id) => chosen.has(id);
export const selected = () => [...chosen];

export function onSelection(fn) {
  listeners.add(fn);
  return () => listeners.delete(fn);
}

export function select(id, on) {
  if (on) chosen.add(id);
  else chosen.delete(id);
  changed();
}

export function clearSelection() {
  chosen.clear();
  changed();
}

export const compareHref = (ids = selected()) => `#/compare/${ids.join(",")}`;

function changed() {
  for (const fn of listeners) fn();
}

// The bar under the job list: how many are ticked, Compare (two or more) and Clear.
export function initSelectionBar() {
  const render = () => {
    const n = chosen.size;
    $("select-bar").hidden = n === 0;
    $("select-count").textContent = `${n} selected`;
    $("compare-btn").disabled = n < 2;
    $("compare-btn").title = n < 2 ? "tick two or more jobs" : "";
  };
  $("compare-btn").addEventListener("click", () => { location.hash = compareHref(); });
  $("clear-btn").addEventListener("click", clearSelection);
  onSelection(render);
  render();
}
