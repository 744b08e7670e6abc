// Shows the text a Modelsmith node reports (inspection report, built prompt, sampler settings, merge
// counts) inside the node, below the user's own widgets. The node only ever grows to fit the report:
// it never shrinks below the size the user gave it, so no widget or text box gets hidden.
// Only the app module is imported (the frontend's internal scripts/widgets.js is not a public API).
import { app } from "../../scripts/app.js";

const REPORT = "modelsmith_report";

function reportWidget(node) {
  let widget = node.widgets?.find((w) => w.name === REPORT);
  if (widget) return widget;
  const area = document.createElement("textarea");
  area.readOnly = true;
  area.className = "comfy-multiline-input modelsmith-report";
  area.style.opacity = "0.85";
  area.style.whiteSpace = "pre-wrap";
  if (node.addDOMWidget) {
    widget = node.addDOMWidget(REPORT, "modelsmith_report", area, {
      serialize: false,
      getValue: () => area.value,
      setValue: (v) => { area.value = v; },
      getMinHeight: () => Math.min(400, 24 + 16 * (area.value.split("\n").length + 1)),
    });
  } else {
    widget = node.addWidget("text", REPORT, "", () => {}, { serialize: false });
  }
  widget.serialize = false;
  widget.modelsmithArea = area;
  return widget;
}

app.registerExtension({
  name: "modelsmith.showText",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!nodeData?.name?.startsWith("Modelsmith")) return;
    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (message) {
      onExecuted?.apply(this, arguments);
      const text = message?.text;
      if (!text) return;
      const value = Array.isArray(text) ? text.join("\n\n") : String(text);
      const widget = reportWidget(this);
      widget.value = value;
      if (widget.modelsmithArea) widget.modelsmithArea.value = value;
      const want = this.computeSize?.() ?? this.size;
      // grow only: keep whatever size the node had (the user's text boxes stay as large as they were)
      this.setSize?.([Math.max(this.size[0], want[0]), Math.max(this.size[1], want[1])]);
      app.graph?.setDirtyCanvas?.(true, true);
    };
  },
});
