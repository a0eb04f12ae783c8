// The console's only script (served from the binary; the CSP runs nothing else): alerts shown
// on a page follow their state without a reload. It listens to /ui/alerts/live (server-sent
// events, the session cookie authenticates it) and writes what changed into the elements marked
// data-alert-id / data-field, as text only. Without it every page still works; it only saves
// the reload.
"use strict";
(function () {
  var shown = document.querySelectorAll("[data-alert-id]");
  var notice = document.getElementById("live-notice");
  if (!window.EventSource || (shown.length === 0 && !notice)) {
    return;
  }
  var onPage = {};
  shown.forEach(function (el) {
    onPage[el.getAttribute("data-alert-id")] = true;
  });
  var fresh = {};
  var source = new EventSource("/ui/alerts/live");
  source.addEventListener("alert", function (message) {
    var a;
    try {
      a = JSON.parse(message.data);
    } catch (e) {
      return;
    }
    if (typeof a.alertId !== "string") {
      return;
    }
    if (!onPage[a.alertId]) {
      if (notice && a.created) {
        fresh[a.alertId] = true;
        var n = Object.keys(fresh).length;
        notice.textContent = n + " new alert(s) since this page was loaded: reload to see them.";
        notice.hidden = false;
      }
      return;
    }
    document.querySelectorAll('[data-alert-id="' + CSS.escape(a.alertId) + '"] [data-field]').forEach(function (cell) {
      var name = cell.getAttribute("data-field");
      if (!Object.prototype.hasOwnProperty.call(a, name)) {
        return;
      }
      var value = a[name] === null || a[name] === undefined ? "" : String(a[name]);
      if (cell.textContent !== value) {
        cell.textContent = value;
        cell.classList.add("changed");
      }
    });
  });
  source.addEventListener("end", function () {
    // The server ends a stream when the session does; the browser would otherwise reconnect.
    source.close();
  });
})();
