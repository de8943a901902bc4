import os
import shutil

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

version: dict = {}
with open('mmdet_retina_plugin/version.py') as f:
    exec(f.read(), version)

with open('README.md', encoding='utf-8') as f:
    long_description = f.read()


class BuildWithConfigs(build_py):
    """Also copies ``configs/`` into the built package as ``mmdet_retina_plugin/.mim/configs``.

    The configs stay at the repository root for users of a checkout; an installed package finds
    them here (``mmdet_retina_plugin.tools.configs``), as mmdet keeps its own in
    ``mmdet/.mim/configs``. An editable install builds nothing and reads the checkout's.
    """

    def run(self) -> None:
        super().run()
        target = os.path.join(self.build_lib, 'mmdet_retina_plugin', '.mim', 'configs')
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(os.path.join(os.path.dirname(os.path.abspath(__file__)), 'configs'), target,
                        ignore=shutil.ignore_patterns('__pycache__', '*.pyc'))


setup(
    name='mmdet_retina_plugin',
    version=version['__version__'],
    description='RetinaNet modules (focal loss, head, FPN, IoU assigner) for MMDetection 3.x',
    long_description=long_description,
    long_description_content_type='text/markdown',
    python_requires='>=3.8',
    packages=find_packages(include=['mmdet_retina_plugin', 'mmdet_retina_plugin.*']),
    cmdclass={'build_py': BuildWithConfigs},
    install_requires=[
        # An existing torch is kept (CUDA users bring their own build); the private torch names
        # we use (docs/reliability.md) exist since 2.0. The suite runs on 2.13.
        'torch>=2.0',
        # We override and read private mmengine code (CheckpointHook._save_checkpoint_with_step,
        # HistoryBuffer._statistics_methods, Runner.setup_env's skip of an initialised process
        # group): only the 0.10 line from the version the suite runs on.
        'mmengine>=0.10.7,<0.11',
        'mmcv>=2.0.0rc4,<2.2.0',  # mmdet 3.3.0 refuses mmcv >= 2.2
        'mmdet>=3.3.0,<3.4',
        'numpy',
        'pycocotools',
        'matplotlib',
        'setuptools<81',  # mmengine and mim import pkg_resources, gone in setuptools 81
    ],
    extras_require={
        'tests': ['pytest', 'pytest-timeout', 'hypothesis', 'ruff', 'triton', 'openmim==0.3.9'],
        'deploy': ['onnx', 'onnxruntime', 'onnxscript'],
        'mim': ['openmim==0.3.9'],
    },
    entry_points={
        'console_scripts': ['mmdet-retina=mmdet_retina_plugin.tools.cli:main'],
    },
    classifiers=[
        'Programming Language :: Python :: 3',
        'License :: OSI Approved :: Apache Software License',
        'Topic :: Scientific/Engineering :: Artificial Intelligence',
    ],
    license='Apache-2.0',
)
