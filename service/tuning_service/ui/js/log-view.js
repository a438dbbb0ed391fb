// The job's log lines (newest last), kept to a bounded number in the page, scrolled to the end while
// "Follow" is on. Scrolling up turns follow off; scrolling back to the end turns it on again (a resize that
// re-wraps the lines is not a scroll up).
import { el } from "./dom.js";

const MAX_LINES = 2000;

export function createLogView(list, followBox) {
  let pending = false;
  let lastTop = 0;

  function scrollToEnd() {
    pending = false;
    if (!followBox.checked) return;
    list.scrollTop = list.scrollHeight;
    lastTop = list.scrollTop;
  }

  function onScroll() {
    const atEnd = list.scrollHeight - list.scrollTop - list.clientHeight < 4;
    if (atEnd) followBox.checked = true;
    else if (list.scrollTop < lastTop) followBox.checked = false;
    lastTop = list.scrollTop;
  }
  const resized = new ResizeObserver(() => scrollToEnd());
  resized.observe(list);

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
      resized.disconnect();
      list.removeEventListener("scroll", onScroll);
      followBox.removeEventListener("change", onFollow);
      list.replaceChildren();
    },
  };
}
