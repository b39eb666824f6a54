"""`python -m labs.serve ENGINE MODEL_DIR`: one engine behind the guard (labs/serve/engines.py)."""

import sys

from labs.serve.engines import main

sys.exit(main())
