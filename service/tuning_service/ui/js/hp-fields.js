// The hyperparameter inputs of the new-job form (the common ones; the rest go in the JSON box).
import { el } from "./dom.js";

const FIELDS = [
  ["epochs", "Epochs", "auto"],
  ["batch_size", "Batch size", "auto"],
  ["learning_rate", "Learning rate", "0.0002"],
  ["max_steps", "Max steps", ""],
  ["max_seq_length", "Max sequence length", "1024"],
  ["lora_r", "LoRA rank (r)", "16"],
  ["lora_alpha", "LoRA alpha", "32"],
  ["lora_dropout", "LoRA dropout", "0.05"],
  ["eval_steps", "Eval every N steps", ""],
  ["save_steps", "Checkpoint every N steps", ""],
];

export function buildHyperparameterFields(container) {
  container.replaceChildren(
    ...FIELDS.map(([name, label, placeholder]) => {
      const id = `f-hp-${name}`;
      return el(
        "div",
        { class: "field", "data-param": `hyperparameters.${name}` },
        el("label", { for: id }, label),
        el("input", { id, name, inputmode: "decimal", spellcheck: "false", placeholder,
          "aria-describedby": `${id}-error` }),
        el("p", { id: `${id}-error`, class: "field-error" }),
      );
    }),
  );
}

// Typed values: numbers as numbers, "auto" as is; anything else goes to the server as typed, so that its
// validation names the field ("learning_rate must be a number").
export function readHyperparameters(container) {
  const hp = {};
  for (const [name] of FIELDS) {
    const raw = container.querySelector(`#f-hp-${name}`).value.trim();
    if (raw === "") continue;
    hp[name] = raw !== "auto" && Number.isFinite(Number(raw)) ? Number(raw) : raw;
  }
  return hp;
}
