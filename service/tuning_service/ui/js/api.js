// Every API call: the Bearer header, the service's error shape, and one "unauthorized" signal for a 401.
import { getKey } from "./session.js";

// The dashboard lives at <root>/ui/; the API at <root>/ (works behind a proxy that mounts it under a prefix).
const ROOT = new URL("../../", import.meta.url);
export const UNAUTHORIZED = "tuning:unauthorized";

export class ApiError extends Error {
  constructor(status, error) {
    super(error.message || `HTTP ${status}`);
    this.status = status;
    this.code = error.code || "http_error";
    this.param = error.param || null;
    this.line = error.line ?? null;
  }
}

export function apiUrl(path, query = {}) {
  const url = new URL(path.replace(/^\//, ""), ROOT);
  for (const [name, value] of Object.entries(query)) {
    if (value !== undefined && value !== null && value !== "") url.searchParams.set(name, String(value));
  }
  return url;
}

export async function apiFetch(path, { method = "GET", query, json, body, headers, signal } = {}) {
  const h = new Headers(headers || {});
  const key = getKey();
  if (key) h.set("Authorization", `Bearer ${key}`);
  if (json !== undefined) {
    h.set("Content-Type", "application/json");
    body = JSON.stringify(json);
  }
  const response = await fetch(apiUrl(path, query), {
    method, headers: h, body, signal, credentials: "omit", cache: "no-store",
  });
  if (response.ok) return response;
  let error = { message: `HTTP ${response.status}` };
  try {
    error = (await response.json()).error || error;
  } catch {
    // not our JSON error shape (a proxy's page): keep the status line
  }
  if (response.status === 401) window.dispatchEvent(new CustomEvent(UNAUTHORIZED));
  throw new ApiError(response.status, error);
}

export async function apiJson(path, options) {
  return (await apiFetch(path, options)).json();
}

// A random Idempotency-Key (crypto.randomUUID needs a secure context; a plain-http VM is not one).
export function idempotencyKey() {
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return "ui-" + Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}
