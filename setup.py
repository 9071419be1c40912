"""radvqa: deterministic, distributed corpus builder for radiology VQA.

Templates, distractor pools, schemas and recipes live at the top of the
repository; they ship inside the package as ``pipeline/_resources/<kind>`` so
that ``pip install .`` (and Beam's ``--setup_file``) gives workers everything.
"""

from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent
RESOURCES = ("templates", "distractor_pools", "schemas", "recipes")


def resource_packages():
    """Map each resource folder (and its sub-folders) to a package under pipeline._resources."""
    packages, package_dir, package_data = [], {}, {}
    for kind in RESOURCES:
        root = HERE / kind
        for folder in sorted([root, *[p for p in root.rglob("*") if p.is_dir()]]):
            if folder.name == "__pycache__":
                continue
            rel = folder.relative_to(HERE)
            name = "pipeline._resources." + ".".join(rel.parts)
            packages.append(name)
            package_dir[name] = str(rel)
            package_data[name] = ["*.yaml", "*.yml", "*.json", "*.j2", "*.md"]
    return packages, package_dir, package_data


res_packages, res_dirs, res_data = resource_packages()

setup(
    name="radvqa",
    version="0.1.0",
    description="Deterministic, distributed corpus builder for radiology visual question answering",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=[*find_packages(include=["pipeline", "pipeline.*"], exclude=["pipeline._resources*"]), *res_packages],
    package_dir={"pipeline": "pipeline", **res_dirs},
    package_data=res_data,
    include_package_data=False,
    install_requires=[
        "apache-beam==2.77.*",
        "pyarrow>=14,<26",
        "numpy>=1.24",
        "pydicom>=3.0",
        "SimpleITK>=2.3",
        # NIfTI files ITK refuses for float drift in the sform (TotalSegmentator's CT release)
        "nibabel>=5.0",
        # ISA-L's inflate for the plain-NIfTI reader (pipeline/inputs/readers/nifti_raw.py):
        # 4x faster than zlib 1.2 on TotalSegmentator's masks; zlib is the fallback
        "isal>=1.6",
        # libdeflate's inflate for the RadImageNet PNG check (pipeline/inputs/layouts/tree.py):
        # a well-formed 224 px PNG in 3/4 of ISA-L's CPU; ISA-L is the fallback
        "deflate>=0.9",
        # zlib-ng's Z_RLE for the PNGs of slices (pipeline/core/imaging.py): zlib's very bytes
        # at half the CPU; zlib is the fallback
        "zlib-ng>=1.1",
        "jinja2>=3.1",
        "pyyaml>=6.0",
        "jsonschema>=4.18",
        # DICOM pixel decoders: JPEG, JPEG-LS, JPEG 2000, RLE (pydicom picks them up)
        "pylibjpeg>=2.0",
        "pylibjpeg-openjpeg>=2.3",
        "pylibjpeg-rle>=2.0",
        "python-gdcm>=3.0.22",
        # report: plots and the gallery with boxes drawn
        "matplotlib>=3.8",
        "pillow>=10",
        # connected components of structures and their slice crops (pipeline/core/boxes.py):
        # half the CPU of SimpleITK's filter and scipy's ndimage.label, the same counts
        "connected-components-3d>=4.0",
    ],
    extras_require={
        "test": [
            "pytest>=8", "datasets>=3.0", "pandas>=2.0", "pydicom-data", "ruff",
            # tests/test_logistic.py: the learned baseline's own logistic regression against
            # scikit-learn's; tests/test_slices_leaks.py's stronger text model
            "scikit-learn>=1.3",
            # tests/test_ts_layouts.py: files written as the releases and TotalSegmentator write
            # them (NIfTI with header extensions; DICOM SEG)
            "nibabel>=5.0", "highdicom>=0.22",
            # tests/test_packaging.py: build the --setup_file sdist as Beam's stager does
            # (python -m build --no-isolation) and pip-install it offline (bdist_wheel);
            # Python >= 3.12 virtualenvs come without setuptools
            "build>=1.0", "setuptools>=61", "wheel>=0.40",
        ],
    },
    entry_points={"console_scripts": ["radvqa=pipeline.cli:main"]},
)
