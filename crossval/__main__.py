"""`python -m crossval`: run the case matrix (see crossval/run.py)."""

import sys

from crossval.run import main

sys.exit(main(sys.argv[1:]))
