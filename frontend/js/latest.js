// "Latest request wins": when the same question is asked again (a newer preview, estimate, model list), the
// answer to the older one must not land. One helper instead of a counter or an AbortController per caller.

/**
 * A sequence of requests of which only the newest counts. `next()` starts one: it aborts the one before
 * (through its `signal`, for fetches that take one) and gives a ticket whose `current()` says whether no newer
 * request has started since; `cancel()` makes every request so far stale (e.g. the view was left).
 */
export function latestWins() {
  let count = 0;
  let controller = null;
  return {
    next() {
      controller?.abort();
      controller = new AbortController();
      const mine = ++count;
      return { signal: controller.signal, current: () => mine === count };
    },
    cancel() {
      controller?.abort();
      controller = null;
      count += 1;
    },
  };
}
