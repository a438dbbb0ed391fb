// Sign in: check the pasted key against the API (one cheap list call) before keeping it.
import { ApiError, apiJson } from "./api.js";
import { byId } from "./dom.js";
import { clearKey, setKey } from "./session.js";

export function mountSignIn({ onSignedIn }) {
  const form = byId("signin-form");
  const input = byId("api-key");
  const error = byId("api-key-error");
  input.value = "";
  input.removeAttribute("aria-invalid");
  input.focus();

  async function onSubmit(event) {
    event.preventDefault();
    error.textContent = "";
    const key = input.value.trim();
    if (!key) {
      error.textContent = "Paste an API key.";
      input.setAttribute("aria-invalid", "true");
      input.focus();
      return;
    }
    setKey(key);
    try {
      await apiJson("/v1/tunings.list", { query: { limit: 1 } });
    } catch (err) {
      clearKey();
      error.textContent =
        err instanceof ApiError && err.status === 401 ? `This key was refused: ${err.message}` : err.message;
      input.setAttribute("aria-invalid", "true");
      input.focus();
      return;
    }
    input.value = "";
    onSignedIn();
  }

  form.addEventListener("submit", onSubmit);
  return () => {
    form.removeEventListener("submit", onSubmit);
    input.value = "";
  };
}
