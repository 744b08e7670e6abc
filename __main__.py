"""The command line, two ways:

    python -m modelsmith COMMAND ...                         (the pack installed, e.g. pip install -e)
    python custom_nodes/ComfyUI-Modelsmith COMMAND ...       (a clone under any folder name, nothing installed)

Run as a folder, the pack is loaded from this folder under the name `modelsmith`; the folder itself
leaves sys.path, so its `core/` and `nodes/` never shadow ComfyUI's or anyone's modules."""
import sys

if __package__:
    from .cli import main
else:
    import importlib.util
    import os

    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != here]
    spec = importlib.util.spec_from_file_location("modelsmith", os.path.join(here, "__init__.py"),
                                                  submodule_search_locations=[here])
    package = importlib.util.module_from_spec(spec)
    sys.modules["modelsmith"] = package
    spec.loader.exec_module(package)
    from modelsmith.cli import main

sys.exit(main())
