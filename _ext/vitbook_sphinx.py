"""Small fixes to the HTML that Jupyter Book 1.x writes, so every page loads cleanly offline.

* Jupyter Book and sphinx-thebe both add sphinx-thebe's inline configuration script; the
  second copy re-declares a ``const`` and throws in the browser. Keep the first copy of every
  identical inline script.
"""


def _dedupe_scripts(app, pagename, templatename, context, doctree):
    seen, kept = set(), []
    for script in context.get("script_files", []):
        key = (str(script), getattr(script, "attributes", {}).get("body", ""))
        if key in seen:
            continue
        seen.add(key)
        kept.append(script)
    context["script_files"] = kept


def setup(app):
    app.connect("html-page-context", _dedupe_scripts, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
