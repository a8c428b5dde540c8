"""Small fixes to the HTML that Jupyter Book 1.x writes, so every page loads cleanly offline.

* Jupyter Book and sphinx-thebe both register sphinx-thebe's inline configuration script (and
  sphinx-togglebutton's), once with the file name ``None`` and once with ``""``; the page then
  declares the same ``const`` twice and the browser throws. Keep the first of every script that
  has the same file (``None`` and ``""`` alike) and the same attributes.
"""


def _dedupe_scripts(app, pagename, templatename, context, doctree):
    seen, kept = set(), []
    for script in context.get("script_files", []):
        attributes = tuple(sorted(getattr(script, "attributes", {}).items()))
        key = (getattr(script, "filename", None) or "", attributes)
        if key not in seen:
            seen.add(key)
            kept.append(script)
    context["script_files"] = kept


def setup(app):
    app.connect("html-page-context", _dedupe_scripts, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
