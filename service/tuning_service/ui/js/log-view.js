// The job's log lines (newest last), kept to a bounded number in the page, scrolled to the end while
// "Follow" is on. Scrolling up by hand turns follow off; scrolling back to the end turns it on again.
import { el } from "./dom.js";

const MAX_LINES = 2000;

export function createLogView(list, followBox) {
  let pending = false;
  let autoScrolling = false;

  function scrollToEnd() {
    pending = false;
    if (!followBox.checked) return;
    autoScrolling = true;
    list.scrollTop = list.scrollHeight;
  }

  function onScroll() {
    if (autoScrolling) {
      autoScrolling = false;
      return;
    }
    const atEnd = list.scrollHeight - list.scrollTop - list.clientHeight < 4;
    followBox.checked = atEnd;
  }

  function onFollow() {
    if (followBox.checked) scrollToEnd();
  }

  list.addEventListener("scroll", onScroll);
  followBox.addEventListener("change", onFollow);
  list.replaceChildren();

  return {
    append(text, kind = "log") {
      list.append(el("li", { class: `log-${kind}` }, text));
      while (list.childElementCount > MAX_LINES) list.firstElementChild.remove();
      if (!pending && followBox.checked) {
        pending = true;
        requestAnimationFrame(scrollToEnd);
      }
    },
    destroy() {
      list.removeEventListener("scroll", onScroll);
      followBox.removeEventListener("change", onFollow);
      list.replaceChildren();
    },
  };
}
