import sys

from slmops.cli.main import main

sys.exit(main())
