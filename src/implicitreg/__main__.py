"""``python -m implicitreg``: the ``implicitreg`` command (:mod:`implicitreg.cli`)."""

from implicitreg.cli import main

main()
