/* Data sets on the page (docs/datasets.md): what a form's `dataset` field suggests (the
 * built-ins and every registered one, as `name`, its latest version, and `name@version`,
 * each labelled with its classes, shape, uploader and date; read from GET /datasets
 * whenever a form opens, so a data set registered meanwhile is offered), and the "Data
 * sets" view. */

import { api } from "./api.js";
import { $, el } from "./dom.js";
import { ago } from "./format.js";

export const DATALIST_ID = "dataset-names";

/* "784" for rows, "784 (28x28x1)" for an image: what a conv run needs (docs/datasets.md,
 * "Images"). */
export function inputsText(shape) {
  const img = shape.image;
  const bits = String(shape.inputs ?? "");
  return img ? `${bits} (${img.height}x${img.width}x${img.channels})` : bits;
}

function label(d) {
  const shape = d.shape || {};
  const who = d.builtin ? "built-in" : `${d.createdBy || "?"}, ${(d.createdAt || "").slice(0, 10)}`;
  const valid = shape.valid ? `, ${shape.valid} valid` : "";
  return `${d.classes} classes, ${inputsText(shape)} input bits, ${shape.train}/${shape.test}${valid} (${who})`;
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

/* The "Data sets" view: every registered data set (name, version, classes, input bits and
 * an image's shape, train/test rows, who registered it, when) and the built-ins, with how to add one. */
export class DatasetList {
  constructor() {
    this.disposed = false;
    this.load().catch((e) => {
      $("datasets-error").textContent = e.message;
      $("datasets-error").hidden = false;
    });
  }

  async load() {
    const found = (await api("datasets")).datasets;
    if (this.disposed) return;
    $("datasets-error").hidden = true;
    $("datasets-body").replaceChildren(...found.map((d) => {
      const shape = d.shape || {};
      return el("tr", { "data-name": d.name },
        el("td", { text: d.name }),
        el("td", { text: d.builtin ? "built-in" : String(d.version) }),
        el("td", { class: "num", text: String(d.classes) }),
        el("td", { class: "num", text: inputsText(shape) }),
        el("td", { class: "num", text: `${shape.train ?? ""} / ${shape.test ?? ""}` }),
        el("td", { text: d.builtin ? "—" : d.createdBy || "—" }),
        el("td", { text: d.builtin ? "—" : ago(d.createdAt), title: d.createdAt || "" }));
    }));
  }

  dispose() {
    this.disposed = true;
  }
}
