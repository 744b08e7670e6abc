"""The command line, two ways:

    python -m modelsmith COMMAND ...                         (the pack installed, e.g. pip install -e)
    python custom_nodes/ComfyUI-Modelsmith COMMAND ...       (a clone under any folder name, nothing installed)

Run as a folder, the pack is loaded from this folder under the name `modelsmith`; the folder itself
leaves sys.path, so its `core/` and `nodes/` never shadow ComfyUI's or anyone's modules. The pickle
child (core/pickle_child.py) starts the same way with `--pickle-child`, under a private name, so it
never picks up another installed copy of the pack."""
import sys


def _load_from_folder(name: str):
    import importlib.util
    import os

    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != here]
    spec = importlib.util.spec_from_file_location(name, os.path.join(here, "__init__.py"),
                                                  submodule_search_locations=[here])
    package = importlib.util.module_from_spec(spec)
    sys.modules[name] = package
    spec.loader.exec_module(package)
    return package


if __package__:
    from .cli import main
elif len(sys.argv) > 1 and sys.argv[1] == "--pickle-child":
    _load_from_folder("_modelsmith_child")
    from _modelsmith_child.core.pickle_child import child_main
    sys.exit(child_main(sys.argv[2:]))
else:
    _load_from_folder("modelsmith")
    from modelsmith.cli import main

sys.exit(main())
