// The new-job form's Method and Adapter selects and its "Start from checkpoint" box, described by the
// service's own /openapi.json (fetched once, hp-schema.js): nothing here lists a method or an adapter.
// - Method offers the job object's `method` values (TuningJob): the create body takes those, and also the
//   adapters' names with their meaning from before preference tuning (sft with that adapter), which the form
//   leaves to the Adapter select.
// - Adapter offers the create body's `adapter` values after a first "default" choice that sends nothing: the
//   service then applies its default, or for a job started from a checkpoint the checkpoint's own adapter.
// Defaults (selected, and marked "(default)") and the help lines are the create body's. Without the document
// each select offers only "default": the field is left out of the body and the service's default applies.
import { byId, el } from "./dom.js";
import { describeProperty, openapiDocument, resolve } from "./hp-schema.js";

const SELECTS = [
  // [the create body's field, its select, the schema whose field lists the choices, whether "default" (sent
  // as nothing) comes first and is selected]
  ["method", "f-method", "TuningJob", false],
  ["adapter", "f-adapter", "CreateTuningRequest", true],
];
const CHECKPOINT = "f-from-checkpoint";

// A description's first sentence (the rest is API detail: old values, error codes), ending with a period.
function firstSentence(text) {
  const t = (text || "").trim();
  const first = /^[\s\S]*?[.!?](?=\s|$)/.exec(t)?.[0] || t;
  return first && !/[.!?]$/.test(first) ? `${first}.` : first;
}

function fillSelect(select, spec, choices, unsent) {
  if (!spec || !choices.length) return;
  const known = choices.some((c) => c === spec.default);
  const first = unsent && known ? `default (${spec.default}; from a checkpoint: its own)` : "default";
  select.replaceChildren(
    known && !unsent ? null : el("option", { value: "", selected: true }, first),
    ...choices.map((c) => {
      const isDefault = c === spec.default && !unsent;
      return el("option", { value: String(c), selected: isDefault }, isDefault ? `${c} (default)` : String(c));
    }),
  );
  byId(`${select.id}-help`).textContent = firstSentence(spec.description);
}

function propertiesOf(doc, name) {
  const schema = resolve(doc, doc?.components?.schemas?.[name]);
  return schema.properties && typeof schema.properties === "object" ? schema.properties : {};
}

// Fills the fields once the document is in; the Method select's data-state says "loading", "ready" or
// "failed" (the form retries a failed load when it is opened again).
export async function buildJobFields() {
  const state = byId("f-method").dataset;
  state.state = "loading";
  let doc;
  try {
    doc = await openapiDocument();
  } catch {
    for (const [, id] of SELECTS) {
      byId(`${id}-help`).textContent = "Choices not loaded (the service's /openapi.json): its default applies.";
    }
    state.state = "failed";
    return false;
  }
  const spec = (schema, name) => {
    const prop = propertiesOf(doc, schema)[name];
    return prop ? describeProperty(doc, name, prop) : null;
  };
  for (const [name, id, listedIn, unsent] of SELECTS) {
    fillSelect(byId(id), spec("CreateTuningRequest", name), spec(listedIn, name)?.choices || [], unsent);
  }
  byId(`${CHECKPOINT}-help`).textContent = firstSentence(spec("CreateTuningRequest", "from_checkpoint")?.description);
  state.state = "ready";
  return true;
}

// What goes into the create body: a chosen method and adapter, and from_checkpoint only when filled in.
export function readJobFields() {
  const body = {};
  for (const [name, id] of SELECTS) {
    const value = byId(id).value;
    if (value) body[name] = value;
  }
  const checkpoint = byId(CHECKPOINT).value.trim();
  if (checkpoint) body.from_checkpoint = checkpoint;
  return body;
}
