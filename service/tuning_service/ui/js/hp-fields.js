// The hyperparameter inputs of the new-job form, built from the service's own schema (hp-schema.js): one
// input per property of the served Hyperparameters, in the document's order, with its limits, default
// (as the placeholder) and description. The common ones are shown; the rest are under "More hyperparameters".
import { ApiError } from "./api.js";
import { el } from "./dom.js";
import { allowedText, defaultText, hyperparameterSpecs, parseValue } from "./hp-schema.js";

// Shown first, in the document's order (the seed spec's names); every other property goes under "More".
const COMMON = new Set(["epochs", "learning_rate", "batch_size"]);

const built = new Map(); // name -> spec, of the fields on the page

function sentence(text) {
  const t = text.trim();
  return t ? `${t[0].toUpperCase()}${t.slice(1)}${/[.!?]$/.test(t) ? "" : "."}` : "";
}

function control(spec, id) {
  const attrs = { id, name: `hp-${spec.name}`, "data-hp": spec.name, "aria-describedby": `${id}-help ${id}-error` };
  if (spec.kind === "choice") {
    const fallback = spec.default == null ? "default" : `default (${defaultText(spec)})`;
    return [el("select", attrs, el("option", { value: "" }, fallback),
      ...spec.choices.map((c) => el("option", { value: String(c) }, String(c))))];
  }
  Object.assign(attrs, { spellcheck: "false", autocomplete: "off", placeholder: defaultText(spec) });
  if (spec.kind !== "number") return [el("input", { ...attrs, type: "text" })];
  // min/max are the document's limits (an exclusive one is marked, the server enforces it).
  Object.assign(attrs, {
    min: spec.min, max: spec.max,
    "data-min-exclusive": spec.minExclusive, "data-max-exclusive": spec.maxExclusive,
    inputmode: spec.integer ? "numeric" : "decimal",
  });
  if (!spec.consts.length) {
    const input = el("input", { ...attrs, type: "number", step: spec.integer ? "1" : "any" });
    // Scrolling the page over a focused number box would change its value: the wheel scrolls the page.
    input.addEventListener("wheel", () => input.blur(), { passive: true });
    return [input];
  }
  // A number or a word ("auto"): text, with the words offered as suggestions.
  const list = `${id}-choices`;
  return [
    el("input", { ...attrs, type: "text", inputmode: null, list }),
    el("datalist", { id: list }, ...spec.consts.map((c) => el("option", { value: c }))),
  ];
}

function field(spec) {
  const id = `f-hp-${spec.name}`;
  const help = [sentence(spec.description), sentence(allowedText(spec))].filter(Boolean).join(" ");
  return el(
    "div",
    { class: "field", "data-param": `hyperparameters.${spec.name}` },
    el("label", { for: id }, spec.label),
    ...control(spec, id),
    el("p", { id: `${id}-help`, class: "help" }, help),
    el("p", { id: `${id}-error`, class: "field-error" }),
  );
}

// Fills `container` once the schema is in; its data-state says "loading", "ready" or "failed".
export async function buildHyperparameterFields(container) {
  container.dataset.state = "loading";
  container.replaceChildren(el("p", { class: "help", role: "status" }, "Loading the hyperparameters…"));
  let specs;
  try {
    specs = await hyperparameterSpecs();
  } catch (err) {
    container.dataset.state = "failed";
    container.replaceChildren(
      el("p", { class: "hp-unavailable", role: "alert", id: "hp-unavailable" },
        `The hyperparameter fields could not be loaded from the service's /openapi.json (${err.message}). `
        + "You can still give hyperparameters as a JSON object below; open this form again to retry."),
    );
    return false;
  }
  built.clear();
  for (const spec of specs) built.set(spec.name, spec);
  let common = specs.filter((s) => COMMON.has(s.name));
  let more = specs.filter((s) => !COMMON.has(s.name));
  if (!common.length) [common, more] = [more, []];
  container.replaceChildren(
    el("div", { class: "grid hp-grid" }, ...common.map(field)),
    more.length
      ? el("details", { class: "hp-more", id: "hp-more" },
        el("summary", {}, `More hyperparameters (${more.length})`),
        el("div", { class: "grid hp-grid" }, ...more.map(field)))
      : null,
  );
  container.dataset.state = "ready";
  return true;
}

// Typed values: numbers as numbers, "auto" as is, booleans as booleans, lists as lists; an empty field is
// left out (the server's default applies). Text that does not parse goes to the server as typed, so that
// its validation names the field and its limits ("hyperparameters.epochs must be an integer in [1, 1000]...").
export function readHyperparameters(container) {
  const hp = {};
  for (const input of container.querySelectorAll("[data-hp]")) {
    const spec = built.get(input.dataset.hp);
    if (!spec) continue;
    if (input.validity && input.validity.badInput) {
      // A number box holding something that is no number ("1e"): the browser does not say what it was.
      throw new ApiError(400, {
        message: `hyperparameters.${spec.name} must be ${allowedText(spec)}, got something that is not a number`,
        param: `hyperparameters.${spec.name}`,
      });
    }
    const value = parseValue(spec, input.value);
    if (value !== undefined) hp[spec.name] = value;
  }
  return hp;
}
