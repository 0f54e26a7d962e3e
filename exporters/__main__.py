import sys

from exporters.cli import main

sys.exit(main())
