// Small progressive enhancements; every page works without this file.
(function () {
  "use strict";

  // Copy buttons: <button data-copy="#selector">.
  document.addEventListener("click", function (event) {
    var button = event.target.closest("[data-copy]");
    if (!button) return;
    var source = document.querySelector(button.getAttribute("data-copy"));
    if (!source) return;
    var text = "value" in source && source.value !== undefined ? source.value : source.textContent;
    var done = function () {
      button.textContent = "Copied";
      setTimeout(function () { button.textContent = "Copy"; }, 2000);
    };
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(text).then(done, function () { fallback(source, done); });
    } else {
      fallback(source, done);
    }
  });

  function fallback(source, done) {
    var range = document.createRange();
    range.selectNodeContents(source);
    if (source.select) source.select();
    else { var sel = window.getSelection(); sel.removeAllRanges(); sel.addRange(range); }
    document.execCommand("copy");
    done();
  }

  // Keep the log panel scrolled to the newest line unless the reader scrolled up.
  document.addEventListener("htmx:oobBeforeSwap", function (event) {
    var log = document.getElementById("log-lines");
    if (log && event.detail.target === log) {
      log.dataset.stick = String(log.scrollHeight - log.scrollTop - log.clientHeight < 40);
    }
  });
  document.addEventListener("htmx:oobAfterSwap", function (event) {
    var log = document.getElementById("log-lines");
    if (log && event.detail.target === log && log.dataset.stick !== "false") {
      log.scrollTop = log.scrollHeight;
    }
  });
  document.addEventListener("DOMContentLoaded", function () {
    var log = document.getElementById("log-lines");
    if (log) log.scrollTop = log.scrollHeight;
  });

  // Upload progress: <form data-progress="#progress-id"> posted by htmx.
  document.addEventListener("htmx:xhr:progress", function (event) {
    var form = event.target.closest ? event.target.closest("form[data-progress]") : null;
    if (!form || !event.detail.lengthComputable) return;
    var bar = document.querySelector(form.getAttribute("data-progress"));
    if (!bar) return;
    var percent = Math.round((event.detail.loaded / event.detail.total) * 100);
    bar.value = percent;
    bar.hidden = false;
    var label = document.querySelector(form.getAttribute("data-progress") + "-text");
    if (label) label.textContent = percent + " %";
  });
})();
