"""`python -m dallmi_core.cli`."""

import sys

from dallmi_core.cli.main import main

sys.exit(main())
