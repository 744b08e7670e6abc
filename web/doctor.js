// Model Doctor in the frontend: a sidebar tab of the extension manager with the summary, the disk
// picture and the files (web/doctor_view.js), and a button that opens the same view as a page of its
// own (web/doctor.html, served from this extension's folder whatever the pack's folder is named).
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";
import { renderDoctor } from "./doctor_view.js";

const PAGE = new URL("./doctor.html", import.meta.url).href;

app.registerExtension({
  name: "modelsmith.doctor",
  async setup() {
    // every frontend the supported ComfyUI versions pin has the extension manager's sidebar tabs;
    // nothing is added to the page outside the tab and no global is written
    app.extensionManager?.registerSidebarTab?.({
      id: "modelsmith-doctor", icon: "pi pi-heart", title: "Model Doctor", tooltip: "Model Doctor (Modelsmith)",
      type: "custom", render: (el) => renderDoctor(el, (p, o) => api.fetchApi(p, o), { pageUrl: PAGE }),
    });
  },
});
