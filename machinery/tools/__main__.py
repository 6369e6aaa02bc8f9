"""`python -m machinery.tools ...`: the instructor tools (see cli.py)."""
import sys

from .cli import main

sys.exit(main())
