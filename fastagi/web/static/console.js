// Calls in progress refresh themselves: the fragment is fetched again every few seconds.
(function () {
  var REFRESH_MS = 5000;
  var box = document.getElementById("live");
  if (!box) return;
  setInterval(function () {
    fetch(box.dataset.refresh, { credentials: "same-origin" })
      .then(function (r) { return r.ok ? r.text() : null; })
      .then(function (html) { if (html !== null) box.innerHTML = html; })
      .catch(function () {});
  }, REFRESH_MS);
})();
