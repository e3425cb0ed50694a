"""`python -m dallmi_core.cli.main`."""

import sys

from dallmi_core.cli.main import main

sys.exit(main())
