// The dashboard's shell: a hash router (#/jobs, #/jobs/<id>, #/new) that shows one view at a time, and the
// session rules: no key, a 401 or "Sign out" all lead to the sign-in view, which forgets what was shown.
import { UNAUTHORIZED } from "./api.js";
import { byId } from "./dom.js";
import { mountJob } from "./job-view.js";
import { mountJobs } from "./jobs-view.js";
import { mountNewJob } from "./new-job.js";
import { clearKey, getKey } from "./session.js";
import { mountSignIn } from "./signin.js";

const VIEWS = ["signin", "jobs", "job", "new"];
let unmount = null;

function route() {
  const hash = location.hash.replace(/^#\/?/, "");
  const job = /^jobs\/([A-Za-z0-9_.:-]+)$/.exec(hash);
  if (job) return { view: "job", params: { id: decodeURIComponent(job[1]) } };
  if (hash === "new") return { view: "new", params: {} };
  return { view: "jobs", params: {} };
}

function show(view, mount, params) {
  if (unmount) unmount();
  unmount = null;
  for (const name of VIEWS) byId(`view-${name}`).hidden = name !== view;
  byId("nav").hidden = view === "signin";
  for (const link of byId("nav").querySelectorAll("a")) {
    if (link.getAttribute("href") === `#/${view === "job" ? "jobs" : view}`) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  unmount = mount(params) || null;
}

function render({ focus = true } = {}) {
  if (!getKey()) {
    show("signin", mountSignIn, { onSignedIn: () => { setBanner(""); render(); } });
    return;
  }
  const { view, params } = route();
  const mount = { jobs: mountJobs, job: mountJob, new: mountNewJob }[view];
  show(view, mount, params);
  document.title = `${{ jobs: "Jobs", job: params.id, new: "New job" }[view]} · Tuning dashboard`;
  // Move focus to the new page's heading area so screen readers and keyboard users start there.
  if (focus) byId("main").focus({ preventScroll: true });
}

function setBanner(text) {
  const banner = byId("banner");
  banner.textContent = text;
  banner.hidden = !text;
}

function signOut(message) {
  clearKey();
  setBanner(message);
  render({ focus: false });
}

byId("sign-out").addEventListener("click", () => signOut("Signed out."));
window.addEventListener(UNAUTHORIZED, () => {
  if (getKey()) signOut("Your API key was refused (401): sign in again.");
});
window.addEventListener("hashchange", () => {
  setBanner("");
  render();
});
render({ focus: false });
