"""python -m minissc: the same as the minissc command."""
from minissc.cli import main

raise SystemExit(main())
