"""`python -m labs.label`: the labelling page (labs/label/server.py)."""

import sys

from labs.label.server import main

sys.exit(main())
