import sys

from mateperf.cli import main

sys.exit(main())
