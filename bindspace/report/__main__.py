import sys

from bindspace.report import main

sys.exit(main())
