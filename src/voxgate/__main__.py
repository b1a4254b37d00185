"""``python -m voxgate serve``."""

from voxgate.cli import main

raise SystemExit(main())
