"""`python -m mabeamd.worker`: how the arbiter spawns a worker."""

import sys

from mabeamd.worker.main import main

sys.exit(main())
