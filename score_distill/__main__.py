"""`python -m score_distill` is the `score-distill` command."""

import sys

from score_distill.cli import main

sys.exit(main())
