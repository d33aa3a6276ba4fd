"""``python -m pipeline.cli``: the ``dicom-pipeline`` command."""

import sys

from pipeline.cli import main

sys.exit(main())
