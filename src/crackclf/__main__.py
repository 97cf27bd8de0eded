import sys

from crackclf.cli import main

sys.exit(main())
