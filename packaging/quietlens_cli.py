"""Bundle entry point of the command line (``quietlens``): the installed package's own ``main``."""
import sys

if sys.argv[1:3] == ["-m", "quietlens.engine.child"]:  # how engine/child.py starts its batch helper
    from quietlens.engine.child import main as child

    sys.exit(child())

from quietlens.engine.cli import main  # noqa: E402

sys.exit(main())
