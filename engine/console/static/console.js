// The console's own behaviour, served as a file (the Content-Security-Policy allows no inline
// script). Payload text never goes through innerHTML here: the server renders it, escaped, and
// what this file reads back from the page it reads as attributes and text.
"use strict";

(function () {
  const token = document.querySelector('meta[name="csrf-token"]')?.getAttribute("content") || "";
  const styleNonce = document.querySelector('meta[name="style-nonce"]')?.getAttribute("content") || "";

  // Every htmx request carries the session's CSRF token (forms carry it as a hidden field).
  document.addEventListener("htmx:configRequest", (event) => {
    event.detail.headers["X-CSRF-Token"] = token;
  });

  // Live refresh of the log can be paused: elements marked data-live skip their polls.
  document.addEventListener("htmx:beforeRequest", (event) => {
    const live = document.getElementById("live");
    const source = event.detail.elt;
    if (live && !live.checked && source && source.hasAttribute("data-live")) {
      event.preventDefault();
    }
  });

  function mountEditor(textarea) {
    const CM = window.CM;
    if (!CM) return null;
    let fields = [];
    fetch(textarea.dataset.fieldsUrl, { credentials: "same-origin" })
      .then((answer) => (answer.ok ? answer.json() : { fields: [] }))
      .then((found) => { fields = found.fields || []; })
      .catch(() => { fields = []; });

    function complete(context) {
      const word = context.matchBefore(/(data|payload)\.[A-Za-z0-9_.\[\]]*/);
      if (!word || (word.from === word.to && !context.explicit)) return null;
      return {
        from: word.from,
        options: fields
          .filter((field) => field.path.startsWith(word.text))
          .map((field) => ({ label: field.path, type: "property", detail: field.type, info: "e.g. " + field.example })),
        validFor: /^[A-Za-z0-9_.\[\]]*$/,
      };
    }

    const view = new CM.EditorView({
      parent: textarea.parentNode,
      state: CM.EditorState.create({
        doc: textarea.value,
        extensions: [
          CM.EditorView.cspNonce.of(styleNonce),
          CM.basicSetup,
          CM.keymap.of([CM.indentWithTab]),
          CM.yaml(),
          CM.lintGutter(),
          CM.autocompletion({ override: [complete], activateOnTyping: true }),
          CM.EditorView.updateListener.of((update) => {
            if (!update.docChanged) return;
            textarea.value = update.state.doc.toString();
            textarea.dispatchEvent(new Event("input", { bubbles: true }));
          }),
        ],
      }),
    });
    textarea.parentNode.insertBefore(view.dom, textarea.nextSibling);
    textarea.hidden = true;
    view.dom.classList.add("editor");
    view.dom.setAttribute("data-testid", "editor");
    window.ruleEditor = view; // for people debugging from the browser's console, and for tests
    return view;
  }

  // The problems the server found, as diagnostics at their line in the editor.
  function showProblems(view, result) {
    if (!view) return;
    const doc = view.state.doc;
    const diagnostics = [];
    for (const item of result.querySelectorAll("[data-line]")) {
      const lineNumber = Math.min(Math.max(parseInt(item.getAttribute("data-line"), 10) || 1, 1), doc.lines);
      const line = doc.line(lineNumber);
      const column = Math.max(parseInt(item.getAttribute("data-column"), 10) || 1, 1);
      const from = Math.min(line.from + column - 1, line.to);
      diagnostics.push({
        from,
        to: Math.max(from + 1, line.to) > doc.length ? doc.length : Math.max(from + 1, line.to),
        severity: "error",
        message: item.getAttribute("data-message") || "",
      });
    }
    view.dispatch(window.CM.setDiagnostics(view.state, diagnostics));
  }

  document.addEventListener("DOMContentLoaded", () => {
    const textarea = document.getElementById("rule-text");
    const view = textarea ? mountEditor(textarea) : null;
    document.addEventListener("htmx:afterSwap", (event) => {
      if (event.detail.target && event.detail.target.id === "result") {
        showProblems(view, event.detail.target);
      }
    });
  });
})();
