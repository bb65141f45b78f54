// The Bills page follows the Airflow UI around it: its light or dark theme, its language and
// its time zone. The page is same-origin with the UI (its frame), so the UI's choices are read
// where the UI keeps them: the theme as the "dark" class of the UI's <html> (else its
// localStorage "theme"), the language in localStorage "i18nextLng", the time zone in
// localStorage "timezone". Language and zone go to the server as cookies (bills_lang,
// bills_tz) and the page is made again once; without this script the page uses the browser's
// language, the unit's time zone and the system's theme.
(function () {
  "use strict";
  var root = document.documentElement;

  function uiIsDark() {
    try {
      if (window.parent !== window) {
        return window.parent.document.documentElement.classList.contains("dark");
      }
    } catch (e) { /* not framed by the UI */ }
    try {
      var theme = window.localStorage.getItem("theme");
      if (theme === "dark" || theme === "light") return theme === "dark";
    } catch (e) { /* no storage */ }
    return null;
  }

  function followTheme() {
    var dark = uiIsDark();
    if (dark === null) delete root.dataset.theme;
    else root.dataset.theme = dark ? "dark" : "light";
  }
  followTheme();
  try {
    new MutationObserver(followTheme).observe(window.parent.document.documentElement, {
      attributes: true, attributeFilter: ["class"],
    });
  } catch (e) { /* not framed */ }

  function stored(key) {
    try {
      var value = window.localStorage.getItem(key);
      if (value === null) return null;
      try {
        var parsed = JSON.parse(value);
        return typeof parsed === "string" ? parsed : null;
      } catch (e) { return value; }
    } catch (e) { return null; }
  }

  function cookie(name) {
    var found = document.cookie.split("; ").filter(function (c) { return c.indexOf(name + "=") === 0; });
    return found.length ? found[0].slice(name.length + 1) : null;
  }

  var changed = false;
  [["bills_lang", stored("i18nextLng")], ["bills_tz", stored("timezone")]].forEach(function (pair) {
    var value = pair[1];
    if (!value || !/^[A-Za-z0-9_+\-\/]{1,64}$/.test(value) || cookie(pair[0]) === value) return;
    document.cookie = pair[0] + "=" + value + "; path=/bills; SameSite=Lax; max-age=31536000";
    changed = true;
  });
  if (changed && !window.sessionStorage.getItem("bills_followed")) {
    window.sessionStorage.setItem("bills_followed", "1");
    window.location.reload();
    return;
  }
  window.sessionStorage.removeItem("bills_followed");

  // A link to an Airflow page (target _top) opens in the UI's own window, not inside this frame.
  // The UI frames the page sandboxed without top navigation, so the link is followed by the UI's
  // document (same origin): one Airflow UI, at the run or task asked for.
  document.addEventListener("click", function (event) {
    var link = event.target.closest ? event.target.closest("a[target=_top]") : null;
    if (!link || window.parent === window || event.button !== 0 || event.ctrlKey || event.metaKey) return;
    try {
      var top = window.parent.document;
      var followed = top.createElement("a");
      followed.href = link.href;
      top.body.appendChild(followed);
      followed.click();
      event.preventDefault();
    } catch (e) { /* not the UI's frame: the link's own target */ }
  });

  // "Every order on this page" on the overview.
  var all = document.getElementById("pick-all");
  if (all) {
    all.addEventListener("change", function () {
      document.querySelectorAll("input[name=id]").forEach(function (box) { box.checked = all.checked; });
    });
  }
})();
