// Progressive enhancement only: every page works without it.
// - data-confirm on a submit button asks before the form is sent.
// - data-refresh="N" on an element reloads the page every N seconds (running jobs and scans).
"use strict";
document.addEventListener("click", function (event) {
  var button = event.target.closest("[data-confirm]");
  if (button && !window.confirm(button.getAttribute("data-confirm"))) {
    event.preventDefault();
  }
});
document.addEventListener("DOMContentLoaded", function () {
  var refresher = document.querySelector("[data-refresh]");
  if (refresher) {
    var seconds = Math.max(1, parseInt(refresher.getAttribute("data-refresh"), 10) || 5);
    window.setTimeout(function () { window.location.reload(); }, seconds * 1000);
  }
});
