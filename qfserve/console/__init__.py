"""The web console: static files (plain ES modules and CSS, no build step) served at `/console/`."""

from __future__ import annotations

from pathlib import Path

STATIC_DIR = Path(__file__).parent / "static"
