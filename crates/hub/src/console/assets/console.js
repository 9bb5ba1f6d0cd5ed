// Sendense web console: copy buttons (the only script besides htmx).
document.addEventListener('click', function (e) {
  var b = e.target.closest('[data-copy]');
  if (!b) { return; }
  var t = document.getElementById(b.getAttribute('data-copy'));
  if (t && navigator.clipboard) {
    navigator.clipboard.writeText(t.textContent).then(function () { b.textContent = 'Copied'; });
  }
});
