// Keyboard shortcuts. The pages work without them; they save caseworkers a reach for the mouse.
// Queue: j / k move between cases, Enter (or o) opens one, x ticks it, / searches.
// Case page: c goes to the Claim button (Enter then claims: no single key changes a case),
// n goes to the next case in the queue, a jumps to the actions, q back to the queue.
// Single-key shortcuts can be switched off (WCAG 2.1.4), remembered in this browser.
(function () {
  "use strict";
  var STORE = "countersign.shortcuts";
  function enabled() {
    try { return window.localStorage.getItem(STORE) !== "off"; } catch (e) { return true; }
  }
  Array.prototype.forEach.call(document.querySelectorAll("[data-shortcuts-toggle]"), function (button) {
    function show() {
      button.textContent = enabled() ? "Turn keyboard shortcuts off" : "Turn keyboard shortcuts on";
      button.setAttribute("aria-pressed", enabled() ? "false" : "true");
    }
    button.hidden = false;
    show();
    button.addEventListener("click", function () {
      try { window.localStorage.setItem(STORE, enabled() ? "off" : "on"); } catch (e) { /* private mode */ }
      show();
    });
  });
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
    if (!enabled() || typing(event) || event.altKey || event.ctrlKey || event.metaKey) return;
    var key = event.key;
    if (rows.length) {
      if (key === "j") { select(current + 1); event.preventDefault(); }
      else if (key === "k") { select(current - 1); event.preventDefault(); }
      else if ((key === "o" || key === "Enter") && current >= 0) { window.location = rows[current].querySelector("a").href; }
      else if (key === "x" && current >= 0) { var box = rows[current].querySelector("input[type=checkbox]"); if (box) box.checked = !box.checked; }
      else if (key === "/") { var q = document.getElementById("q"); if (q) { q.focus(); event.preventDefault(); } }
    }
    var claim = document.getElementById("claim-form");
    if (key === "c" && claim) { var button = claim.querySelector("button"); if (button) { button.focus(); event.preventDefault(); } }
    var next = document.getElementById("next-case");
    if (key === "n" && next) { window.location = next.href; }
    var actions = document.getElementById("actions-h");
    if (key === "a" && actions) { actions.scrollIntoView(); var first = document.getElementById("action-choice"); if (first) { first.focus(); event.preventDefault(); } }
    var queue = document.getElementById("back-to-queue");
    if (key === "q" && queue) { window.location = queue.href; }
  });
})();
// The reports' Print button (a printable layout is in app.css's print rules).
(function () {
  Array.prototype.forEach.call(document.querySelectorAll("[data-print]"), function (button) {
    button.addEventListener("click", function () { window.print(); });
  });
})();
// The case page's "choose an action": only the chosen action's form (and its reason box)
// shows. Without script every action's form shows, and each still works.
(function () {
  var choice = document.querySelector("[data-action-choice]");
  if (!choice) return;
  var forms = Array.prototype.slice.call(document.querySelectorAll(".action-form"));
  function show() {
    forms.forEach(function (form) { form.hidden = form.getAttribute("data-action") !== choice.value; });
  }
  choice.addEventListener("change", function () {
    show();
    var open = document.querySelector(".action-form:not([hidden]) textarea, .action-form:not([hidden]) input:not([type=hidden])");
    if (open) open.focus();
  });
  show();
})();
