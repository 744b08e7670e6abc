"""Talking to a ComfyUI: the workflow graphs (`workflows`) and the HTTP queue client (`queue`)."""
