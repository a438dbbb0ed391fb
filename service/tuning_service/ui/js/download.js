// Downloads that need the Authorization header: fetch the archive, then hand the browser a Blob URL.
import { apiFetch } from "./api.js";

function filenameOf(response, fallback) {
  const cd = response.headers.get("Content-Disposition") || "";
  const m = /filename="?([^";]+)"?/i.exec(cd);
  // Only a plain file name: the browser sanitises too, but never trust a path from a header.
  return m ? m[1].replace(/[\\/]/g, "_") : fallback;
}

export async function downloadAdapter(jobId, checkpointStep = null) {
  const query = checkpointStep === null ? {} : { checkpoint: checkpointStep };
  const response = await apiFetch(`/v1/tunings.download/${encodeURIComponent(jobId)}`, { query });
  const blob = await response.blob();
  const url = URL.createObjectURL(blob);
  const a = document.createElement("a");
  a.href = url;
  a.download = filenameOf(response, `${jobId}-adapter.tar.gz`);
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60000);
  return a.download;
}
