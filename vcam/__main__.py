"""`python -m vcam ...` is the `vcam` command (for a checkout that pip has not installed)."""
import sys

from vcam.cli import main

sys.exit(main())
