// concord's status page: the replica renders every section; this script only keeps them live.
// It listens to /ui/events (server-sent events, which reconnect by themselves) and swaps each
// section's HTML in. No framework, no build step.
"use strict";
(function () {
  const live = document.getElementById("live");
  let last = 0;
  function show(text, cls) {
    live.textContent = text;
    live.className = cls;
  }
  const events = new EventSource("/ui/events");
  events.addEventListener("sections", function (e) {
    const sections = JSON.parse(e.data);
    for (const id of Object.keys(sections)) {
      const el = document.getElementById(id);
      if (el) {
        el.innerHTML = sections[id];
      }
    }
    last = Date.now();
    show("live", "live");
  });
  events.onerror = function () {
    show("this replica does not answer; retrying…", "down");
  };
  // Updates come every second: say so when they stop, even before the stream errors.
  setInterval(function () {
    if (last && Date.now() - last > 5000) {
      show("no update for " + Math.round((Date.now() - last) / 1000) + " s", "down");
    }
  }, 1000);
})();
