import sys

from moediag.cli import main

sys.exit(main())
