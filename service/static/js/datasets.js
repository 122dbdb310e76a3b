/* The data sets a form's `dataset` field suggests (docs/datasets.md): the built-ins and
 * every registered one, as `name` (its latest version) and `name@version`, with its shape
 * and who registered it in the suggestion's label. Read from GET /datasets when the page
 * starts and whenever a form opens, so a data set registered meanwhile is offered. */

import { api } from "./api.js";

export const DATALIST_ID = "dataset-names";

function label(d) {
  const shape = d.shape || {};
  const who = d.builtin ? "built-in" : `${d.createdBy || "?"}, ${(d.createdAt || "").slice(0, 10)}`;
  return `${d.classes} classes, ${shape.inputs} input bits, ${shape.train}/${shape.test} (${who})`;
}

export async function refreshDatasetNames() {
  let list = document.getElementById(DATALIST_ID);
  if (!list) {
    list = document.createElement("datalist");
    list.id = DATALIST_ID;
    document.body.append(list);
  }
  let found;
  try {
    found = (await api("datasets")).datasets;
  } catch {
    return; // the field still takes any name; the API says if it is unknown
  }
  const options = [];
  const latest = new Set();
  for (const d of found) {
    if (!d.builtin && !latest.has(d.name)) {
      latest.add(d.name);
      options.push([d.name, `latest: v${d.version}, ${label(d)}`]);
    }
    if (!d.builtin) options.push([`${d.name}@${d.version}`, label(d)]);
    else if (!latest.has(d.name)) options.push([d.name, label(d)]);
  }
  list.replaceChildren(...options.map(([value, text]) => {
    const o = document.createElement("option");
    o.value = value;
    o.label = text;
    return o;
  }));
}
