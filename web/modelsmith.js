// Shows the text a Modelsmith node reports (inspection report, built prompt) inside the node.
import { app } from "../../scripts/app.js";

app.registerExtension({
  name: "modelsmith.showText",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!nodeData?.name?.startsWith("Modelsmith")) return;
    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (message) {
      onExecuted?.apply(this, arguments);
      const text = message?.text;
      if (!text) return;
      let widget = this.widgets?.find((w) => w.name === "modelsmith_report");
      if (!widget) {
        widget = ComfyWidgets["STRING"](this, "modelsmith_report", ["STRING", { multiline: true }], app).widget;
        widget.inputEl.readOnly = true;
        widget.inputEl.style.opacity = 0.85;
        widget.serialize = false;
      }
      widget.value = Array.isArray(text) ? text.join("\n\n") : String(text);
      this.setSize?.(this.computeSize());
    };
  },
});

import { ComfyWidgets } from "../../scripts/widgets.js";
