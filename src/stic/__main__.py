import sys

from stic.cli import main

sys.exit(main())
