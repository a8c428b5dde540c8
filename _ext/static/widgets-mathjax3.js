// The ipywidgets HTML manager typesets widget labels through MathJax 2's API
// (MathJax.Hub.Queue); the book loads MathJax 3, which has no Hub. Give MathJax 3 the one Hub
// call the manager makes, mapped onto MathJax 3's typesetPromise. Runs before the manager
// renders widgets (it does so on the window's load event).
(function () {
  function shim() {
    var mj = window.MathJax;
    if (mj && !mj.Hub) {
      mj.Hub = {
        Queue: function (job) {
          var element = job && job[2];
          if (element && window.MathJax.typesetPromise) {
            window.MathJax.typesetPromise([element]).catch(function () {});
          }
        },
      };
    }
  }
  shim();
  document.addEventListener("DOMContentLoaded", shim);
  window.addEventListener("load", shim);
})();
