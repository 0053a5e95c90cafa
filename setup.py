"""Package discovery, the one thing pyproject.toml cannot say for convgen.

Every package under convgen/ is found (an explicit list would silently drop a new
subpackage), plus convgen.templates, whose files live in templates/ at the top of the
checkout (pyproject.toml maps it there and lists its data). ``[tool.setuptools.packages.find]``
can only find packages where they lie, so it cannot add that one.
"""

from setuptools import find_packages, setup

setup(packages=find_packages(include=["convgen", "convgen.*"]) + ["convgen.templates"])
