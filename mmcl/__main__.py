import sys

from mmcl.cli import main

sys.exit(main())
