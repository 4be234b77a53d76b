"""SelVA Studio's app file (the Hugging Face Spaces `app_file`): `python app.py --help`.

The app itself is the `selva.app` package; `selva.app.launch.main` parses the command line,
loads the models once and serves the page.
"""

import sys

from selva.app.launch import main

if __name__ == "__main__":
    sys.exit(main())
