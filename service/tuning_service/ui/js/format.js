// Numbers and times as people read them; "—" for what is not known yet.
export const NONE = "—";

export function fmtTime(unixSeconds) {
  if (!unixSeconds) return NONE;
  const d = new Date(unixSeconds * 1000);
  const sameDay = d.toDateString() === new Date().toDateString();
  return sameDay
    ? d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" })
    : d.toLocaleString([], { dateStyle: "short", timeStyle: "short" });
}

export function fmtDuration(seconds) {
  if (seconds === null || seconds === undefined || !Number.isFinite(seconds)) return NONE;
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${String(s % 60).padStart(2, "0")}s`;
  return `${Math.floor(s / 3600)}h ${String(Math.floor((s % 3600) / 60)).padStart(2, "0")}m`;
}

export function fmtNum(x, digits = 4) {
  if (x === null || x === undefined || !Number.isFinite(x)) return NONE;
  if (x !== 0 && (Math.abs(x) < 1e-3 || Math.abs(x) >= 1e6)) return x.toExponential(2);
  return String(Number(x.toPrecision(digits)));
}

export function fmtInt(x) {
  if (x === null || x === undefined || !Number.isFinite(x)) return NONE;
  return Math.round(x).toLocaleString();
}

export function fmtPercent(fraction) {
  if (fraction === null || fraction === undefined || !Number.isFinite(fraction)) return NONE;
  return `${Math.round(fraction * 100)}%`;
}
