"""The front end's parts: keymap, autopilot, stepper, HUD, window, recorder, replay check (see play.py)."""
import os

os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")  # keep headless runs' output to what matters
