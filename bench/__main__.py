"""`python -m bench`: bitnet_ref and llama.cpp side by side on the same GGUF (see bench/run.py)."""

import sys

from bench.run import main

if __name__ == "__main__":
    sys.exit(main())
