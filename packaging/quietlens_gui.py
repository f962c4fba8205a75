"""Bundle entry point of the desktop app (``quietlens-gui``): the installed package's own ``main``."""
import sys

if sys.argv[1:3] == ["-m", "quietlens.engine.child"]:  # how engine/child.py starts its batch helper
    from quietlens.engine.child import main as child

    sys.exit(child())

from quietlens.app.main import main  # noqa: E402

sys.exit(main())
