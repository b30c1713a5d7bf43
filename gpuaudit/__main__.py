import sys

from gpuaudit.cli import main

sys.exit(main())
