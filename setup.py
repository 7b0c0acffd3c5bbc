"""Package list for setuptools (everything else is in pyproject.toml).

Every Python package under cds_service/ is found automatically; two data packages are added: the repository's
top-level protocol/ and cards/ folders, which stay where a pharmacist finds them and are installed as
cds_service.protocol_files and cds_service.card_files (see [tool.setuptools.package-dir] in pyproject.toml).
"""

from setuptools import find_packages, setup

setup(
    packages=[
        *find_packages(include=["cds_service", "cds_service.*"]),
        "cds_service.protocol_files",
        "cds_service.card_files",
    ]
)
