// Polling with exponential backoff and jitter on errors, paused while the tab is hidden.
// `task()` returns the delay (ms) it wants before the next run; a throw backs off up to `maxDelay`.
export function startPolling(task, { maxDelay = 30000, onError = () => {} } = {}) {
  let stopped = false;
  let timer = null;
  let failures = 0;
  let running = false;
  let again = false; // now() was asked for while a run was in flight

  async function run() {
    timer = null;
    if (stopped || running) return;
    if (document.hidden) {
      document.addEventListener("visibilitychange", run, { once: true });
      return;
    }
    running = true;
    again = false;
    let delay;
    try {
      delay = await task();
      failures = 0;
    } catch (err) {
      failures += 1;
      const backoff = Math.min(maxDelay, 1000 * 2 ** (failures - 1));
      delay = backoff / 2 + Math.random() * (backoff / 2);
      onError(err, failures);
    } finally {
      running = false;
    }
    if (!stopped) timer = setTimeout(run, again ? 0 : delay);
  }

  run();
  return {
    // Run again now (e.g. after an action), instead of waiting for the timer.
    now() {
      if (stopped) return;
      if (running) {
        again = true;
        return;
      }
      if (timer !== null) clearTimeout(timer);
      run();
    },
    stop() {
      stopped = true;
      if (timer !== null) clearTimeout(timer);
      document.removeEventListener("visibilitychange", run);
    },
  };
}
