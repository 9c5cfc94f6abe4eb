// Progressive enhancement only: every page reads and works without this file.
// Live refresh: with "auto-refresh" ticked, the page's <main> is reloaded every 5 s
// (same URL, same cookie), unless a form field has focus.
(function () {
  var box = document.getElementById('autorefresh');
  if (!box) return;
  box.checked = localStorage.getItem('culm.autorefresh') === '1';
  box.addEventListener('change', function () { localStorage.setItem('culm.autorefresh', box.checked ? '1' : '0'); });
  setInterval(function () {
    if (!box.checked) return;
    var a = document.activeElement;
    if (a && (a.tagName === 'INPUT' || a.tagName === 'SELECT' || a.tagName === 'TEXTAREA')) return;
    fetch(location.href, { credentials: 'same-origin' }).then(function (r) { return r.ok ? r.text() : null; }).then(function (html) {
      if (!html) return;
      var doc = new DOMParser().parseFromString(html, 'text/html');
      var next = doc.querySelector('main'), cur = document.querySelector('main');
      if (next && cur) cur.replaceWith(next);
    }).catch(function () {});
  }, 5000);
})();
// "Select all" for dead-letter checkboxes.
document.addEventListener('change', function (e) {
  if (e.target && e.target.id === 'select-all') {
    document.querySelectorAll('input[name=ids]').forEach(function (c) { c.checked = e.target.checked; });
  }
});
