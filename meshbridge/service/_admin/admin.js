// The admin page's live refresh: every data-refresh seconds, fetch the
// server-rendered (escaped) live part again and put it in place. Nothing else
// needs JavaScript: without it the page works, and reloading it refreshes it.
(function () {
  "use strict";
  var live = document.getElementById("live");
  var status = document.getElementById("live-status");
  if (!live || !status || !window.fetch) {
    return;
  }
  var every = Math.max(200, Number(live.dataset.refresh) * 1000 || 2000);
  var busy = false;

  function say(state, text) {
    status.dataset.state = state;
    status.textContent = text;
  }

  function refresh() {
    if (busy || document.hidden) {
      return;
    }
    busy = true;
    fetch(live.dataset.source, {
      credentials: "same-origin",
      cache: "no-store",
      headers: { Accept: "text/html" },
    })
      .then(function (response) {
        if (!response.ok) {
          throw new Error(response.status === 401 ? "signed out: reload the page to sign in again" : "HTTP " + response.status);
        }
        return response.text();
      })
      .then(function (html) {
        live.innerHTML = html; // rendered and escaped by the server
        say("live", "live: refreshed every " + every / 1000 + " s, last at " + new Date().toLocaleTimeString());
      })
      .catch(function (error) {
        say("stale", "not refreshed: " + error.message);
      })
      .then(function () {
        busy = false;
      });
  }

  say("live", "live: refreshed every " + every / 1000 + " s");
  window.setInterval(refresh, every);
  document.addEventListener("visibilitychange", refresh);
})();
