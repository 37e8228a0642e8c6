"""Package layout: the repo's top-level `train/`, `convert/`, `infer/` and `export/` install
as `flax_effnet.train`, `flax_effnet.convert`, `flax_effnet.infer` and `flax_effnet.export`
(nothing generic like `train` lands at the top of site-packages). Subpackages are found with `find_packages`, so a new folder
with an `__init__.py` is packaged without editing a list; everything else is in pyproject.toml.
"""

from setuptools import find_packages, setup

# Installed package -> folder in the repo.
ROOTS = {
    "flax_effnet": "flax_effnet",
    "flax_effnet.train": "train",
    "flax_effnet.convert": "convert",
    "flax_effnet.infer": "infer",
    "flax_effnet.export": "export",
}


def _packages() -> tuple[list[str], dict[str, str]]:
    packages, package_dir = [], {}
    for package, folder in ROOTS.items():
        package_dir[package] = folder
        packages.append(package)
        packages += [f"{package}.{sub}" for sub in find_packages(folder)]
    return packages, package_dir


packages, package_dir = _packages()
setup(packages=packages, package_dir=package_dir)
