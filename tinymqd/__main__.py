"""Allow `python3 -m tinymqd`."""

import sys

from tinymqd.cli import main

sys.exit(main())
