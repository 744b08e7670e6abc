"""The one exception type for problems a user can cause (bad file, wrong combination, unsafe pickle)."""


class ModelsmithError(Exception):
    """A problem with the user's input, with a message that says what is wrong and what to do.

    ComfyUI shows an exception's type as `module.name`; inside ComfyUI the pack's module is named
    after its folder path, so the type reads `modelsmith.ModelsmithError` (and its subclasses likewise)
    wherever the pack was installed, not as a file path."""

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        cls.__module__ = "modelsmith"


ModelsmithError.__module__ = "modelsmith"


def a(word) -> str:
    """'an sdxl' / 'an anima' / 'a flux1' / 'an 8.0 MB': the article a sentence needs before `word`
    (family ids starting with 'sd' are read as the acronym: "an SDXL")."""
    text = str(word)
    head = text.lower()
    vowel = head[:1] in ("a", "e", "i", "o") or (head[:1] == "u" and not head.startswith(("uni", "une", "use", "usu")))
    eight = head.startswith("8") or head.split(".")[0].split("-")[0].split(" ")[0] in ("11", "18")
    return ("an " if vowel or eight or head.startswith("sd") else "a ") + text


class UnsafePickleError(ModelsmithError):
    """A pickle asked for a global outside the allowlist; nothing from it was executed."""

    def __init__(self, path, global_name):
        self.global_name = global_name
        super().__init__(
            f"{path}: refused to load: the pickle asks for '{global_name}', which is not on the "
            f"allowlist of tensor data. A checkpoint needs no code to load; this file may be "
            f"malicious. Nothing from it was executed. Get a .safetensors version of the model."
        )


class UsageError(ModelsmithError, ValueError):
    """A value the user typed (a block list, a pattern) that cannot be used; a ValueError too."""
