// journal-gateway console: local times and live refresh. Every page works without it.
(function () {
  "use strict";
  function localTimes(root) {
    root.querySelectorAll("time[datetime]").forEach(function (t) {
      var d = new Date(t.getAttribute("datetime"));
      if (isNaN(d.getTime())) { return; }
      if (!t.dataset.utc) { t.dataset.utc = t.textContent; }
      t.title = t.dataset.utc;
      t.textContent = d.toLocaleString();
    });
  }
  function refresh(live, seconds) {
    setTimeout(function () {
      fetch(window.location.href, { credentials: "same-origin", headers: { "Accept": "text/html" } })
        .then(function (r) {
          if (!r.ok || r.redirected) { throw new Error("stopped"); }
          return r.text();
        })
        .then(function (html) {
          var doc = new DOMParser().parseFromString(html, "text/html");
          var fresh = doc.getElementById(live.id);
          if (fresh) {
            localTimes(fresh);
            if (fresh.innerHTML !== live.innerHTML) { live.innerHTML = fresh.innerHTML; }
          }
          refresh(live, seconds);
        })
        .catch(function () { /* logged out or server gone: keep the page as it is */ });
    }, seconds * 1000);
  }
  document.addEventListener("DOMContentLoaded", function () {
    localTimes(document);
    var live = document.querySelector("[data-refresh]");
    if (live) { refresh(live, Number(live.dataset.refresh) || 5); }
  });
})();
