// The new-job form: optional uploads to /v1/files.upload, then /v1/tunings.create; every error (upload
// validation with its line, or the create call's) is shown next to the field its `param` names. The
// hyperparameter inputs (hp-fields.js) and the method and adapter choices (job-fields.js) come from the served
// schema; without it the JSON box still works and the service's defaults apply.
import { ApiError, apiJson, idempotencyKey } from "./api.js";
import { byId } from "./dom.js";
import { clearErrors, showError } from "./form-errors.js";
import { buildHyperparameterFields, readHyperparameters } from "./hp-fields.js";
import { buildJobFields, readJobFields } from "./job-fields.js";

async function upload(fileInput, pathInput, param) {
  const file = fileInput.files[0];
  if (!file) return pathInput.value.trim() || null;
  const form = new FormData();
  form.append("purpose", "fine-tune");
  form.append("file", file, file.name);
  const uploaded = await apiJson("/v1/files.upload", { method: "POST", body: form });
  if (uploaded.status === "error") {
    const e = uploaded.error || {};
    throw new ApiError(422, { code: e.code, message: `${file.name}: ${e.message}`, param, line: e.line });
  }
  // The id replaces the upload: submitting again (after fixing another field) does not upload it twice.
  pathInput.value = uploaded.id;
  fileInput.value = "";
  return uploaded.id;
}

export function mountNewJob() {
  const form = byId("new-form");
  const hpBox = byId("hp-fields");
  const busy = byId("f-busy");
  const submit = byId("f-submit");
  // Built from the served schema once; a failed load (a message in the box) is retried on the next visit.
  if (!["ready", "loading"].includes(hpBox.dataset.state)) buildHyperparameterFields(hpBox);
  if (!["ready", "loading"].includes(byId("f-method").dataset.state)) buildJobFields();
  clearErrors(form);
  // One key per filled-in form: a retried submit of the same form never creates two jobs.
  let key = idempotencyKey();
  const onInput = () => {
    key = idempotencyKey();
  };
  form.addEventListener("input", onInput);

  async function onSubmit(event) {
    event.preventDefault();
    clearErrors(form);
    submit.disabled = true;
    busy.textContent = "Submitting…";
    try {
      let hp = {};
      const extra = byId("f-hp-extra").value.trim();
      if (extra) {
        try {
          hp = JSON.parse(extra);
        } catch (err) {
          throw new ApiError(400, { message: `not valid JSON: ${err.message}`, param: "hyperparameters" });
        }
      }
      hp = { ...hp, ...readHyperparameters(hpBox) };
      const body = {
        model: byId("f-model").value.trim(),
        ...readJobFields(),
        training_file: await upload(byId("f-train-upload"), byId("f-train-path"), "training_file"),
      };
      const validation = await upload(byId("f-valid-upload"), byId("f-valid-path"), "validation_file");
      if (validation) body.validation_file = validation;
      if (Object.keys(hp).length) body.hyperparameters = hp;
      const suffix = byId("f-suffix").value.trim();
      if (suffix) body.suffix = suffix;
      const seed = byId("f-seed").value.trim();
      if (seed) body.seed = Number.isFinite(Number(seed)) ? Number(seed) : seed;
      const job = await apiJson("/v1/tunings.create", {
        method: "POST", json: body, headers: { "Idempotency-Key": key },
      });
      form.reset();
      location.hash = `#/jobs/${encodeURIComponent(job.id)}`;
    } catch (err) {
      const target = showError(form, err instanceof ApiError ? err : { message: String(err.message || err) });
      (target || byId("form-error")).focus();
    } finally {
      submit.disabled = false;
      busy.textContent = "";
    }
  }

  form.addEventListener("submit", onSubmit);
  return () => {
    form.removeEventListener("submit", onSubmit);
    form.removeEventListener("input", onInput);
  };
}
