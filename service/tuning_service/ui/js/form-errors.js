// Showing the server's validation errors next to the field they name (the error's `param`).
import { byId } from "./dom.js";

function fieldFor(form, param) {
  // "hyperparameters.learning_rate" -> that field; an unknown hyperparameter -> the JSON box; else the form.
  let name = param || "";
  while (name) {
    const field = form.querySelector(`[data-param="${CSS.escape(name)}"]`);
    if (field) return field;
    name = name.includes(".") ? name.slice(0, name.lastIndexOf(".")) : "";
  }
  return null;
}

export function clearErrors(form) {
  for (const p of form.querySelectorAll(".field-error")) p.textContent = "";
  for (const input of form.querySelectorAll("[aria-invalid]")) input.removeAttribute("aria-invalid");
}

// `error`: {message, code, param, line}. Returns the input to focus.
export function showError(form, error) {
  const line = error.line != null && !/\bline\b/i.test(error.message) ? ` (line ${error.line})` : "";
  const text = `${error.message}${line}`;
  const field = fieldFor(form, error.param);
  if (!field) {
    byId("form-error").textContent = error.param ? `${error.param}: ${text}` : text;
    return null;
  }
  field.querySelector(".field-error").textContent = text;
  const folded = field.closest("details");
  if (folded) folded.open = true; // a field under "More hyperparameters": shown, so that it can take focus
  const inputs = [...field.querySelectorAll("input, select, textarea")];
  for (const input of inputs) input.setAttribute("aria-invalid", "true");
  return inputs.find((i) => i.value) || inputs[0] || null;
}
