"""``python -m facelib``: see facelib.cli."""
from .cli import main

raise SystemExit(main())
