import sys

from fastagi.admin.cli import main

if __name__ == "__main__":  # not when a serve worker process (spawn) imports it
    sys.exit(main())
