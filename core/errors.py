"""The one exception type for problems a user can cause (bad file, wrong combination, unsafe pickle)."""


class ModelsmithError(Exception):
    """A problem with the user's input, with a message that says what is wrong and what to do."""


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
