/* Shared by every page: the menu's dropdowns, local times, confirmations. */
(function () {
  "use strict";

  // Dropdowns are <details>: they work without JavaScript; this closes them when the user
  // clicks elsewhere or presses Escape, and keeps only one open at a time.
  var dropdowns = Array.prototype.slice.call(document.querySelectorAll("[data-dropdown]"));
  dropdowns.forEach(function (dropdown) {
    dropdown.addEventListener("toggle", function () {
      if (!dropdown.open) return;
      dropdowns.forEach(function (other) { if (other !== dropdown) other.open = false; });
    });
  });
  document.addEventListener("click", function (event) {
    dropdowns.forEach(function (dropdown) {
      if (dropdown.open && !dropdown.contains(event.target)) dropdown.open = false;
    });
  });
  document.addEventListener("keydown", function (event) {
    if (event.key !== "Escape") return;
    dropdowns.forEach(function (dropdown) {
      if (dropdown.open) { dropdown.open = false; dropdown.querySelector("summary").focus(); }
    });
  });

  // Times arrive in UTC; people read them in their own time zone.
  window.IU = window.IU || {};
  window.IU.localTime = function (iso) {
    var date = new Date(iso);
    if (isNaN(date.getTime())) return iso;
    return date.toLocaleString(undefined, {
      year: "numeric", month: "short", day: "2-digit",
      hour: "2-digit", minute: "2-digit", second: "2-digit"
    });
  };
  window.IU.localizeTimes = function (root) {
    Array.prototype.forEach.call((root || document).querySelectorAll("time[datetime]"), function (el) {
      el.title = el.getAttribute("datetime");
      el.textContent = window.IU.localTime(el.getAttribute("datetime"));
    });
  };
  window.IU.csrfToken = function () {
    var meta = document.querySelector('meta[name="csrf-token"]');
    return meta ? meta.getAttribute("content") : "";
  };
  window.IU.localizeTimes(document);

  // Destructive admin actions ask first.
  Array.prototype.forEach.call(document.querySelectorAll("form[data-confirm]"), function (form) {
    form.addEventListener("submit", function (event) {
      if (!window.confirm(form.getAttribute("data-confirm"))) event.preventDefault();
    });
  });
})();
