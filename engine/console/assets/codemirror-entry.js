// The parts of CodeMirror 6 the playground uses, bundled by scripts/build-console-assets into
// engine/console/static/vendor/codemirror.js and exposed as window.CM. The console's own code
// that uses them is engine/console/static/console.js (not bundled, readable as served).
import { EditorView, basicSetup } from "codemirror";
import { EditorState } from "@codemirror/state";
import { keymap } from "@codemirror/view";
import { indentWithTab } from "@codemirror/commands";
import { yaml } from "@codemirror/lang-yaml";
import { autocompletion } from "@codemirror/autocomplete";
import { lintGutter, setDiagnostics } from "@codemirror/lint";

window.CM = {
  EditorView, EditorState, basicSetup, keymap, indentWithTab, yaml, autocompletion, lintGutter, setDiagnostics,
};
