"""`python -m nontax_dev.stack up|down|status` (`make up`, `make down`)."""

import sys

from nontax_dev.stack.cli import main

sys.exit(main())
