import sys

from softpick.cli import main

sys.exit(main())
