// Keyboard shortcuts. The pages work without them; they save caseworkers a reach for the mouse.
// Queue: j / k move between cases, Enter (or o) opens one, x ticks it, / searches.
// Case page: c claims, n goes to the next case in the queue, a jumps to the actions, q back to the queue.
(function () {
  "use strict";
  function typing(event) {
    var t = event.target;
    return t && (t.tagName === "INPUT" || t.tagName === "TEXTAREA" || t.tagName === "SELECT" || t.isContentEditable);
  }
  var rows = Array.prototype.slice.call(document.querySelectorAll("tr[data-case]"));
  var current = -1;
  function select(i) {
    if (!rows.length) return;
    current = Math.max(0, Math.min(rows.length - 1, i));
    rows.forEach(function (r, n) { r.classList.toggle("selected", n === current); });
    var link = rows[current].querySelector("a");
    if (link) link.focus();
  }
  document.addEventListener("keydown", function (event) {
    if (typing(event) || event.altKey || event.ctrlKey || event.metaKey) return;
    var key = event.key;
    if (rows.length) {
      if (key === "j") { select(current + 1); event.preventDefault(); }
      else if (key === "k") { select(current - 1); event.preventDefault(); }
      else if ((key === "o" || key === "Enter") && current >= 0) { window.location = rows[current].querySelector("a").href; }
      else if (key === "x" && current >= 0) { var box = rows[current].querySelector("input[type=checkbox]"); if (box) box.checked = !box.checked; }
      else if (key === "/") { var q = document.getElementById("q"); if (q) { q.focus(); event.preventDefault(); } }
    }
    var claim = document.getElementById("claim-form");
    if (key === "c" && claim) { claim.submit(); }
    var next = document.getElementById("next-case");
    if (key === "n" && next) { window.location = next.href; }
    var actions = document.getElementById("actions-h");
    if (key === "a" && actions) { actions.scrollIntoView(); var first = document.querySelector("#actions textarea, #actions button"); if (first) first.focus(); }
    if (key === "q" && claim) { window.location = "/"; }
  });
})();
// The reports' Print button (a printable layout is in app.css's print rules).
(function () {
  Array.prototype.forEach.call(document.querySelectorAll("[data-print]"), function (button) {
    button.addEventListener("click", function () { window.print(); });
  });
})();
