// Edge Cloud console: live updates for every page.
//
// The page names its event stream in <body data-live>. Each "changed" event (and a tick every
// 15 s, so that ages keep moving) fetches the page again and swaps in its live parts: the
// elements marked [data-refresh] with an id. The HTML comes from the server, which escapes
// every device-supplied string; nothing here builds markup from data.
(() => {
  "use strict";

  const body = document.body;
  const liveUrl = body.dataset.live;
  const badge = document.getElementById("live");
  const TICK_MS = 15000;
  let busy = false;
  let again = false;
  let lastRefresh = Date.now();
  let source = null;

  function setState(state, title) {
    if (!badge) return;
    badge.dataset.state = state;
    badge.title = title;
  }

  function toSignIn(response) {
    if (response.redirected && new URL(response.url).pathname === "/signin") {
      window.location.assign(response.url);
      return true;
    }
    return false;
  }

  async function refresh() {
    const parts = document.querySelectorAll("[data-refresh][id]");
    if (!parts.length) return;
    if (busy || document.querySelector(".htmx-request")) {
      again = true; // a swap in flight brings fresh rows too; look again after it
      return;
    }
    busy = true;
    try {
      const response = await fetch(window.location.href, { cache: "no-store", credentials: "same-origin" });
      if (toSignIn(response) || !response.ok) return;
      const fresh = new DOMParser().parseFromString(await response.text(), "text/html");
      for (const part of document.querySelectorAll("[data-refresh][id]")) {
        const next = fresh.getElementById(part.id);
        if (!next || !next.hasAttribute("data-refresh")) continue;
        const node = document.importNode(next, true);
        part.replaceWith(node);
        if (window.htmx) window.htmx.process(node);
      }
      lastRefresh = Date.now();
      body.dispatchEvent(new CustomEvent("console:refreshed"));
    } catch (error) {
      setState("off", "Cannot reach the console; retrying");
    } finally {
      busy = false;
      if (again) {
        again = false;
        setTimeout(refresh, 200);
      }
    }
  }

  function connect() {
    if (!liveUrl || !window.EventSource) return;
    source = new EventSource(liveUrl);
    source.addEventListener("open", () => setState("on", "Live: updates as devices report"));
    source.addEventListener("changed", (event) => {
      let detail = {};
      try {
        detail = JSON.parse(event.data);
      } catch (error) {
        detail = {};
      }
      refresh();
      body.dispatchEvent(new CustomEvent("console:changed", { detail }));
    });
    source.addEventListener("error", () => {
      setState("off", "Live updates interrupted; reconnecting");
      if (source.readyState === EventSource.CLOSED) {
        source.close();
        setTimeout(checkSession, 3000); // refused: signed out, or the server restarted
      }
    });
  }

  async function checkSession() {
    try {
      const response = await fetch(window.location.href, { cache: "no-store", credentials: "same-origin" });
      if (toSignIn(response)) return;
    } catch (error) {
      setTimeout(checkSession, 5000);
      return;
    }
    connect();
  }

  document.addEventListener("htmx:afterSettle", () => {
    lastRefresh = Date.now();
    if (again) {
      again = false;
      refresh();
    }
  });
  document.addEventListener("visibilitychange", () => {
    if (document.visibilityState === "visible" && Date.now() - lastRefresh > TICK_MS) refresh();
  });
  setInterval(() => {
    if (document.visibilityState === "visible" && Date.now() - lastRefresh >= TICK_MS - 250) refresh();
  }, TICK_MS / 3);
  connect();
})();
