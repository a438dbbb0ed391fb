// The hyperparameters as the service describes them: `components.schemas.Hyperparameters` of its served
// /openapi.json (fetched once per page), turned into one plain spec per property, in the document's order.
// Nothing here lists the fields: names, types, limits, choices, defaults and help all come from the document.
import { apiJson } from "./api.js";

let documentPromise = null;

// The OpenAPI document, fetched once; a failed fetch is forgotten so that opening the form again retries.
export function openapiDocument() {
  if (!documentPromise) {
    documentPromise = apiJson("/openapi.json").catch((err) => {
      documentPromise = null;
      throw err;
    });
  }
  return documentPromise;
}

export function resolve(doc, schema, depth = 0) {
  // Local references only ("#/components/schemas/X"), as the service writes them.
  if (!schema || typeof schema.$ref !== "string" || depth > 8) return schema || {};
  const target = schema.$ref.replace(/^#\//, "").split("/").reduce((node, key) => node?.[key], doc);
  return resolve(doc, target, depth + 1);
}

// anyOf/oneOf members (each resolved; a union inside a union is flattened into it), with a `type: [a, b]`
// list split into one branch per type.
function branches(doc, prop, depth = 0) {
  const union = prop.anyOf || prop.oneOf;
  if (!union || depth > 8) {
    return Array.isArray(prop.type) ? prop.type.map((type) => ({ ...prop, type })) : [prop];
  }
  return union.flatMap((b) => branches(doc, resolve(doc, b), depth + 1));
}

const WORDS = { lora: "LoRA", lr: "LR", dpo: "DPO", simpo: "SimPO" };

export function labelOf(name) {
  const words = name.split("_").map((w) => WORDS[w] || w);
  return words.map((w, i) => (i === 0 && w === w.toLowerCase() ? w[0].toUpperCase() + w.slice(1) : w)).join(" ");
}

const big = (n) => (Math.abs(n) >= 1e5 ? n.toLocaleString("en") : String(n));

function rangeText(spec) {
  const kind = spec.integer ? "an integer" : "a number";
  const low = spec.min == null ? "" : `${spec.minExclusive ? ">" : "≥"} ${big(spec.min)}`;
  const high = spec.max == null ? "" : `${spec.maxExclusive ? "<" : "≤"} ${big(spec.max)}`;
  if (low && high && !spec.minExclusive && !spec.maxExclusive) {
    return `${kind} from ${big(spec.min)} to ${big(spec.max)}`;
  }
  return [kind, [low, high].filter(Boolean).join(" and ")].filter(Boolean).join(" ");
}

// What a value of this field may be, in words ('an integer from 1 to 1000 or "auto"').
export function allowedText(spec) {
  const consts = spec.consts.map((c) => JSON.stringify(c));
  if (spec.kind === "number") return [rangeText(spec), ...consts].join(" or ");
  if (spec.kind === "list") return "comma-separated";
  return "";
}

export function defaultText(spec) {
  const value = spec.default;
  if (value === undefined || value === null) return "";
  if (Array.isArray(value)) return value.join(", ");
  return String(value);
}

// One property -> {name, label, description, default, kind, ...}; kind is one of
//   "number": integer/number (min, max, minExclusive, maxExclusive, integer; consts: strings also allowed)
//   "choice": enum and/or boolean (choices: the values, in order)
//   "list":   an array of strings, or a string (strings: the default string is sent as a string)
//   "string", or "json" (anything else: the typed text, parsed as JSON when it parses)
export function describeProperty(doc, name, raw) {
  const prop = resolve(doc, raw);
  const parts = branches(doc, prop).filter((b) => b.type !== "null");
  const spec = {
    name, label: labelOf(name), description: prop.description || parts.find((b) => b.description)?.description || "",
    default: prop.default, hasDefault: "default" in prop, consts: [], choices: [],
    nullable: parts.length < branches(doc, prop).length,
  };
  const numeric = parts.filter((b) => b.type === "integer" || b.type === "number");
  const consts = parts.filter((b) => "const" in b && typeof b.const === "string");
  const enums = parts.filter((b) => Array.isArray(b.enum));
  const bools = parts.filter((b) => b.type === "boolean");
  const arrays = parts.filter((b) => b.type === "array");
  const strings = parts.filter((b) => b.type === "string" && !("const" in b) && !b.enum);
  if (numeric.length && numeric.length + consts.length === parts.length) {
    const n = numeric[0];
    spec.kind = "number";
    spec.integer = numeric.every((b) => b.type === "integer");
    spec.min = n.exclusiveMinimum ?? n.minimum ?? null;
    spec.minExclusive = n.exclusiveMinimum != null;
    spec.max = n.exclusiveMaximum ?? n.maximum ?? null;
    spec.maxExclusive = n.exclusiveMaximum != null;
    spec.consts = consts.map((b) => b.const);
  } else if ((enums.length || bools.length) && enums.length + bools.length + consts.length === parts.length) {
    spec.kind = "choice";
    spec.choices = [...consts.map((b) => b.const), ...enums.flatMap((b) => b.enum), ...(bools.length ? [true, false] : [])];
  } else if (arrays.length && arrays.length + strings.length === parts.length) {
    spec.kind = "list";
    spec.strings = strings.length > 0;
  } else {
    spec.kind = parts.length === 1 && strings.length === 1 ? "string" : "json";
  }
  return spec;
}

// Every property of the served Hyperparameters schema, in the document's order.
export async function hyperparameterSpecs() {
  const doc = await openapiDocument();
  const schema = resolve(doc, doc?.components?.schemas?.Hyperparameters);
  if (!schema.properties || typeof schema.properties !== "object") {
    throw new Error("the service's /openapi.json has no Hyperparameters schema");
  }
  return Object.entries(schema.properties).map(([name, prop]) => describeProperty(doc, name, prop));
}

// The typed value of what was entered, or undefined for an empty field (the server's default applies). Text
// that does not parse is returned as typed: the server's error then names the field and its limits.
export function parseValue(spec, text) {
  const raw = text.trim();
  if (raw === "") return undefined;
  switch (spec.kind) {
    case "number":
      if (spec.consts.includes(raw)) return raw;
      return Number.isFinite(Number(raw)) ? Number(raw) : raw;
    case "choice": {
      const choice = spec.choices.find((c) => String(c) === raw); // true/false back to booleans
      return choice === undefined ? raw : choice;
    }
    case "list":
      // The default string (e.g. "all-linear") as is; anything else is a list of names, as the trainer's
      // command-line flag reads it. An empty item is kept: the server says which one.
      if (spec.strings && raw === spec.default) return raw;
      return raw.split(",").map((part) => part.trim());
    case "string":
      return raw;
    default:
      try {
        return JSON.parse(raw);
      } catch {
        return raw;
      }
  }
}
