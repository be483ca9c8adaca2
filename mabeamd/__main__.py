import sys

from mabeamd.main import main

sys.exit(main())
