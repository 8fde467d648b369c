import sys

from nasprune.cli import main

sys.exit(main())
