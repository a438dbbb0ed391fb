// The API key lives in this tab's sessionStorage only: never a cookie (no CSRF surface), gone with the tab.
const STORAGE_KEY = "tuning.apiKey";

export function getKey() {
  return sessionStorage.getItem(STORAGE_KEY);
}

export function setKey(key) {
  sessionStorage.setItem(STORAGE_KEY, key);
}

export function clearKey() {
  sessionStorage.removeItem(STORAGE_KEY);
}
